//! The registry of diagnostic codes: every code blkc can emit, with its
//! severity and a one-line summary (`blkc explain`-style documentation and
//! the `tests/ui` coverage check both read this table).
//!
//! Ranges: E1xxx syntax, E2xxx/W2xxx semantic checks, E3xxx/W3xxx signal
//! propagation, E4xxx lowering, E5xxx run configuration.

use serde::Serialize;

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

macro_rules! codes {
    ($($code:ident $sev:ident $summary:literal;)*) => {
        /// A diagnostic code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $($code,)* }

        impl Code {
            /// Every code, in registry order.
            pub const ALL: &'static [Code] = &[$(Code::$code,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$code => stringify!($code),)* }
            }

            pub fn severity(self) -> Severity {
                match self { $(Code::$code => Severity::$sev,)* }
            }

            /// What the code means, in one line.
            pub fn summary(self) -> &'static str {
                match self { $(Code::$code => $summary,)* }
            }
        }
    };
}

codes! {
    E1001 Error "syntax error: the text does not fit the grammar here";
    E1002 Error "unterminated string";
    E1003 Error "unclosed delimiter";
    E1004 Error "closing delimiter without an opening one";
    E1005 Error "number too large to represent, or a layer range out of form";
    E1006 Error "character that cannot appear outside comments and strings";
    E1007 Error "file too large or not readable as text";
    E2001 Error "unknown name";
    E2002 Error "block without `out`";
    E2003 Error "product or quotient of two tensors";
    E2004 Error "scalar where a tensor is expected";
    E2005 Error "tensor where a scalar is expected";
    E2006 Error "wrong number of arguments";
    E2007 Error "unknown setting or keyword argument";
    E2008 Error "invalid value for a setting";
    E2009 Error "invalid attention-matrix term";
    E2010 Error "duplicate definition";
    E2011 Error "`use` cycle";
    E2012 Error "`use` of a file that cannot be read";
    E2013 Error "heads do not divide the width";
    E2014 Error "identity value or projection where the shapes differ";
    E2015 Error "number out of range";
    E2016 Error "resource limit exceeded";
    E2017 Error "missing required setting";
    E2018 Error "more than one model";
    E2019 Error "assignment to a reserved name";
    E2020 Error "layer override outside the model's depth";
    E2021 Error "per-head gain outside an attention section";
    E2022 Error "expression does not evaluate to a finite number";
    E2023 Error "name used before it is defined";
    E2024 Error "contradictory flags";
    E2025 Error "layer override of a name the block does not define";
    E2026 Error "`rope_base` in a model without rotary positions";
    W2001 Warning "binding is never used";
    W2002 Warning "block input `x` is never used";
    W2003 Warning "parameter is never used";
    W2004 Warning "trainable map that can never receive a gradient";
    E3001 Error "tokens collapse when the block is stacked";
    E3002 Error "the signal explodes or vanishes when the block is stacked";
    E3003 Error "a sub-block's output is zero at init";
    W3001 Warning "tokens are close to collapse";
    W3002 Warning "token distinctions shrink geometrically with depth";
    W3003 Warning "a bare block that passes at the small model's depth is rejected at depth 18";
    E5001 Error "file has no block or model to work on";
    E5002 Error "the model's vocabulary does not match its tokenizer's";
}
