//! `blkc lsp`: the language server of `.blk` files.
//!
//! It answers over stdio with the same compiler the CLI runs: diagnostics
//! as you type (the signal check included), hover (a block's predicted
//! verdict per layer, a param's initial value per layer, a section's
//! settings per layer class, a call's parameters), go to definition and
//! references across `use`d files, formatting (`blkc fmt`'s), document
//! symbols, completion of settings, values and names, and the verdict as
//! an inlay hint after each block's name.
//!
//! Built on `lsp-server` and `lsp-types`, the crates rust-analyzer uses:
//! the protocol's plumbing and nothing else. The compiler is synchronous
//! and answers in milliseconds, so the server is one loop on one thread,
//! with no async runtime. `lsp-types` is pinned at 0.95, whose `Url`
//! converts to and from file paths (the compiler's `use` resolution works
//! on paths).
//!
//! | file | what |
//! |---|---|
//! | `server.rs` | the loop, debouncing, dispatch, answers from the last good parse |
//! | `analysis.rs` | one document compiled and checked as `blkc check` does; diagnostics |
//! | `index.rs` | definitions and uses of names, resolved by the language's scopes |
//! | `hover.rs` | the Markdown of hovers; the verdict line |
//! | `complete.rs` | completion from the text before the cursor |
//! | `symbols.rs` | document symbols and inlay hints |
//! | `workspace.rs` | open documents; the loader that reads them before the disk |
//! | `text.rs` | byte offsets ↔ LSP positions (UTF-16) |

// Its standard output is the protocol; its log lines must not panic
// when standard error is gone.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod analysis;
pub mod complete;
pub mod hover;
pub mod index;
pub mod rename;
pub mod semantic;
pub mod server;
pub mod symbols;
pub mod text;
pub mod transport;
pub mod workspace;

use lsp_server::Connection;

pub use analysis::Options;

/// Serves one client over stdin and stdout until it exits.
pub fn run_stdio() -> Result<(), String> {
    let (conn, io) = transport::stdio();
    let served = serve(&conn);
    drop(conn);
    // Bad input from the client is why the session ended, whatever the
    // server made of the closed channel.
    let io = io.finish();
    io.and(served)
}

/// Runs the handshake, then serves `conn` until the client exits.
pub fn serve(conn: &Connection) -> Result<(), String> {
    let caps = serde_json::to_value(server::capabilities()).map_err(|e| e.to_string())?;
    let (id, init) = conn.initialize_start().map_err(|e| {
        if e.channel_is_disconnected() {
            "the client closed the connection before `initialize`".to_string()
        } else {
            e.to_string()
        }
    })?;
    let result = serde_json::json!({
        "capabilities": caps,
        "serverInfo": { "name": "blkc", "version": env!("CARGO_PKG_VERSION") },
    });
    conn.initialize_finish(id, result).map_err(|e| e.to_string())?;
    let options = init
        .get("initializationOptions")
        .and_then(|o| serde_json::from_value::<Options>(o.get("blkc").cloned().unwrap_or_else(|| o.clone())).ok())
        .unwrap_or_default();
    // The folder the editor opened (`rootUri`, else the first workspace folder).
    let folder = init
        .get("rootUri")
        .and_then(|u| u.as_str())
        .or_else(|| {
            init.get("workspaceFolders").and_then(|f| f.get(0)).and_then(|f| f.get("uri")).and_then(|u| u.as_str())
        })
        .and_then(|u| lsp_types::Url::parse(u).ok())
        .and_then(|u| u.to_file_path().ok());
    server::Server::new(conn, options).in_workspace(folder).run()
}
