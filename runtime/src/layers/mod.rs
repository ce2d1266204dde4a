//! The layers a block graph is lowered to, one file per kind: each has a
//! builder from the IR (`…::build`) and a `forward`. Weights use the layout
//! `y = x · W` with `W: [fan_in, fan_out]`.

pub mod attention;
pub mod block;
pub mod init;
pub mod map;
pub mod mlp;
pub mod norm;
pub mod scalar;
