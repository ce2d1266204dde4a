//! `blkc lsp` driven over stdio by a small test client: a whole editing
//! session answered as the snapshots say, and the diagnostics of every
//! `tests/ui` case equal to `blkc check`'s.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use serde_json::{json, Value};

/// How long any answer may take before the test fails (no hang).
const PATIENCE: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// `blkc lsp` started in the repository, its stdin and stdout piped.
fn server(stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_blkc"))
        .arg("lsp")
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("blkc lsp starts")
}

/// A client of one `blkc lsp` process.
struct Client {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    /// Notifications received while waiting for something else.
    queued: VecDeque<Value>,
    next_id: i64,
    /// What the server said it can do (`initialize`'s answer).
    capabilities: Value,
}

impl Client {
    fn start(init_options: Value) -> Client {
        Client::start_in(&root(), init_options)
    }

    /// A client whose workspace folder is `folder`.
    fn start_in(folder: &Path, init_options: Value) -> Client {
        let mut child = server(Stdio::inherit());
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, incoming) = channel();
        std::thread::spawn(move || {
            while let Some(m) = read_message(&mut stdout) {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        let mut c = Client { child, stdin, incoming, queued: VecDeque::new(), next_id: 1, capabilities: Value::Null };
        let init = c.request(
            "initialize",
            json!({ "processId": null, "rootUri": uri(folder), "capabilities": {}, "initializationOptions": init_options }),
        );
        assert_eq!(init["serverInfo"]["name"], "blkc", "{init}");
        c.capabilities = init["capabilities"].clone();
        c.notify("initialized", json!({}));
        c
    }

    fn send(&mut self, v: &Value) {
        let body = v.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).expect("write");
        self.stdin.flush().expect("flush");
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    fn next(&mut self) -> Value {
        self.incoming.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("no message from blkc lsp within {PATIENCE:?}"))
    }

    /// Sends a request and returns its result (panics on an error answer).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let m = self.answer(method, params);
        assert!(m.get("error").is_none(), "{method} answered an error: {m}");
        m["result"].clone()
    }

    /// Sends a request and returns the whole answer (a result or an error).
    fn answer(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let m = self.next();
            if m["id"] == json!(id) {
                return m;
            }
            self.queued.push_back(m);
        }
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        if let Some(i) = self.queued.iter().position(|m| is_diagnostics_for(m, uri)) {
            let m = self.queued.remove(i).expect("queued");
            return m["params"]["diagnostics"].as_array().cloned().unwrap_or_default();
        }
        loop {
            let m = self.next();
            if is_diagnostics_for(&m, uri) {
                return m["params"]["diagnostics"].as_array().cloned().unwrap_or_default();
            }
            self.queued.push_back(m);
        }
    }

    fn open(&mut self, uri: &str, text: &str) -> Vec<Value> {
        let doc = json!({ "uri": uri, "languageId": "blk", "version": 1, "text": text });
        self.notify("textDocument/didOpen", json!({ "textDocument": doc }));
        self.diagnostics(uri)
    }

    fn at(&mut self, method: &str, uri: &str, line: u32, character: u32) -> Value {
        let mut params = json!({
            "textDocument": { "uri": uri },
            "position": { "line": line, "character": character },
        });
        if method == "textDocument/references" {
            params["context"] = json!({ "includeDeclaration": true });
        }
        self.request(method, params)
    }

    fn shutdown(mut self) {
        self.request("shutdown", Value::Null);
        self.notify("exit", Value::Null);
        let status = self.child.wait().expect("blkc lsp exits");
        assert!(status.success(), "blkc lsp exited with {status}");
    }
}

fn is_diagnostics_for(m: &Value, uri: &str) -> bool {
    m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri
}

/// One LSP message (`Content-Length` framing), or `None` at the end.
fn read_message(r: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(n) = line.strip_prefix("Content-Length: ") {
            length = n.parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// An answer with the checkout's path replaced, for snapshots.
fn portable(v: &Value) -> Value {
    let text = v.to_string().replace(&uri(&root()), "file:///REPO");
    serde_json::from_str(&text).expect("json")
}

fn text_of(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).expect("readable")
}

fn snapshot(name: &str, v: &Value) {
    insta::with_settings!({ snapshot_path => "snapshots/lsp", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!(name, serde_json::to_string_pretty(&portable(v)).expect("json"));
    });
}

#[test]
fn an_editing_session_is_answered_as_the_snapshots_say() {
    let mut c = Client::start(json!({}));

    // The rejected block: the E3001 squiggle on the attention call, with
    // its help; the file expects it, so it is information (as `blkc check`).
    let naive = uri(&root().join("blocks/skipless-naive.blk"));
    let diags = c.open(&naive, &text_of("blocks/skipless-naive.blk"));
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_eq!(d["code"], "E3001");
    assert_eq!(d["range"], json!({ "start": { "line": 4, "character": 10 }, "end": { "line": 4, "character": 26 } }));
    let message = d["message"].as_str().unwrap_or("");
    assert!(
        message.contains("tokens collapse at layer 6 of 6") && message.contains("help: keep the skip"),
        "{message}"
    );
    snapshot("naive_diagnostics", &Value::Array(diags));
    // Hover on the block: the verdict and the per-layer trace.
    let hover = c.at("textDocument/hover", &naive, 3, 8);
    let value = hover["contents"]["value"].as_str().unwrap_or("");
    assert!(value.contains("reject · collapses at layer") && value.contains("| 6 | 0.99"), "{value}");
    snapshot("naive_hover_block", &hover);
    let hints = c.request(
        "textDocument/inlayHint",
        json!({ "textDocument": { "uri": naive }, "range": {
        "start": { "line": 0, "character": 0 }, "end": { "line": 20, "character": 0 } } }),
    );
    snapshot("naive_inlay_hints", &hints);
    let symbols = c.request("textDocument/documentSymbol", json!({ "textDocument": { "uri": naive } }));
    snapshot("naive_symbols", &symbols);

    // SAS-P: names across `use`d files.
    let sas_p = uri(&root().join("blocks/sas-p.blk"));
    assert_eq!(c.open(&sas_p, &text_of("blocks/sas-p.blk")), Vec::<Value>::new());
    // `shaped` in `attn(n, shaped)` is defined in shaped.blk.
    let def = c.at("textDocument/definition", &sas_p, 8, 30);
    assert_eq!(def["uri"], uri(&root().join("blocks/shaped.blk")), "{def}");
    assert_eq!(def["range"]["start"], json!({ "line": 4, "character": 10 }));
    let refs = c.at("textDocument/references", &sas_p, 8, 30);
    snapshot("sas_p_references_shaped", &refs);
    // A param: its initial value at each layer.
    let hover = c.at("textDocument/hover", &sas_p, 6, 12);
    assert!(hover["contents"]["value"].as_str().unwrap_or("").contains("0.1 (layers 1–6)"), "{hover}");
    snapshot("sas_p_hover_param", &hover);
    // A module call: what it lowers to and its parameters.
    let hover = c.at("textDocument/hover", &sas_p, 8, 49);
    snapshot("sas_p_hover_mlp_call", &hover);
    // A binding, at init.
    snapshot("sas_p_hover_binding", &c.at("textDocument/hover", &sas_p, 7, 4));
    // A section's settings per layer class (hovered in the used file's program).
    let shaped = uri(&root().join("blocks/shaped.blk"));
    c.open(&shaped, &text_of("blocks/shaped.blk"));
    let hover = c.at("textDocument/hover", &shaped, 4, 12);
    let value = hover["contents"]["value"].as_str().unwrap_or("");
    assert!(value.contains("other layers of `sas_p`") && value.contains("layer first of `sas_p`"), "{value}");
    snapshot("shaped_hover_section", &hover);
    let hover = c.at("textDocument/hover", &shaped, 9, 11);
    assert!(hover["contents"]["value"].as_str().unwrap_or("").contains("1 (layers 1–6)"), "{hover}");
    snapshot("shaped_hover_param", &hover);

    // Formatting, completion, and a broken edit.
    let scratch = uri(&root().join("target/lsp-scratch/untidy.blk"));
    let untidy = "block b {\nn=rmsnorm(x)   # the norm\n  out = x+attn(n)+mlp(rmsnorm(x+attn(n)))\n}\n";
    c.open(&scratch, untidy);
    let edits = c.request(
        "textDocument/formatting",
        json!({ "textDocument": { "uri": scratch }, "options": {
        "tabSize": 4, "insertSpaces": true } }),
    );
    snapshot("untidy_formatting", &edits);
    let model = "block b { out = x + attn(rmsnorm(x)) }\nmodel m {\n  block = \n}\n";
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": scratch, "version": 2 },
        "contentChanges": [{ "text": model }] }),
    );
    let items = c.at("textDocument/completion", &scratch, 2, 10);
    let labels: Vec<&str> =
        items.as_array().map(|a| a.iter().filter_map(|i| i["label"].as_str()).collect()).unwrap_or_default();
    assert_eq!(labels, vec!["b"], "a model's `block =` offers the blocks");
    let after_change = c.diagnostics(&scratch);
    assert!(after_change.iter().any(|d| d["code"] == "E1002" || d["code"] == "E1001"), "{after_change:?}");
    // Hover still answers on the broken file, from its last good parse.
    let hover = c.at("textDocument/hover", &scratch, 0, 7);
    assert!(hover["contents"]["value"].as_str().unwrap_or("").contains("block `b`"), "{hover}");

    c.shutdown();
}

/// One diagnostic as `blkc check --format github` prints it.
#[derive(Debug, Clone, PartialEq)]
struct Reported {
    level: String,
    file: String,
    line: u32,
    col: u32,
    end: Option<(u32, u32)>,
    code: String,
    message: String,
}

fn github(line: &str) -> Option<Reported> {
    let (head, message) = line.strip_prefix("::")?.split_once("::")?;
    let (level, props) = head.split_once(' ')?;
    let prop = |k: &str| {
        props
            .split(',')
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .map(|v| v.replace("%3A", ":").replace("%2C", ","))
    };
    let num = |k: &str| prop(k).and_then(|v| v.parse::<u32>().ok());
    let end = num("endLine").zip(num("endColumn"));
    let message = message.replace("%0A", "\n").replace("%25", "%");
    let message = message.split(" (help: ").next().unwrap_or("").to_string();
    Some(Reported {
        level: level.to_string(),
        file: prop("file")?,
        line: num("line")?,
        col: num("col").unwrap_or(1),
        end,
        code: prop("title")?,
        message,
    })
}

/// The 0-based UTF-16 column of a 1-based character column.
fn utf16(text: &str, line: u32, col: u32) -> u32 {
    let l = text.lines().nth(line as usize - 1).unwrap_or("");
    l.chars().take(col as usize - 1).map(char::len_utf16).sum::<usize>() as u32
}

/// A rejected block's quick fix: the smallest change that makes it pass,
/// as one edit, offered where the rejection is; none elsewhere, none for a
/// file that expects its rejection.
#[test]
fn a_rejection_offers_the_fix_that_makes_it_pass() {
    let mut c = Client::start(json!({}));
    let scratch = uri(&root().join("target/lsp-scratch/naive.blk"));
    let text = "block naive {\n    h   = attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}\n";
    let diags = c.open(&scratch, text);
    let rejection = diags.iter().find(|d| d["code"] == "E3001").cloned().expect("rejected");
    let actions = |c: &mut Client, range: Value| {
        c.request(
            "textDocument/codeAction",
            json!({ "textDocument": { "uri": scratch }, "range": range, "context": { "diagnostics": [] } }),
        )
    };
    let offered = actions(&mut c, rejection["range"].clone());
    let first = &offered[0];
    assert!(first["title"].as_str().unwrap_or("").contains("add a skip from `x`"), "{offered}");
    assert_eq!(first["kind"], "quickfix");
    assert_eq!(first["isPreferred"], true);
    let edit = &first["edit"]["changes"][&scratch][0];
    assert_eq!(edit["newText"], "x + ", "{edit}");
    assert_eq!(edit["range"]["start"], json!({ "line": 1, "character": 10 }));
    // Nowhere near the rejection: nothing.
    let elsewhere = json!({ "start": { "line": 2, "character": 0 }, "end": { "line": 2, "character": 3 } });
    assert_eq!(actions(&mut c, elsewhere), json!([]));
    // blocks/skipless-naive.blk expects its rejection: nothing to fix.
    let naive = uri(&root().join("blocks/skipless-naive.blk"));
    let diags = c.open(&naive, &text_of("blocks/skipless-naive.blk"));
    let d = diags.iter().find(|d| d["code"] == "E3001").cloned().expect("reported");
    let none = c.request(
        "textDocument/codeAction",
        json!({ "textDocument": { "uri": naive }, "range": d["range"], "context": { "diagnostics": [] } }),
    );
    assert_eq!(none, json!([]));
    c.shutdown();
}

/// A quick fix is searched on its own thread: a hover asked after it is
/// answered first, and the fix follows when its search ends (Post-LN at
/// depth 72: about a second of search).
#[test]
fn a_fix_search_does_not_hold_up_other_answers() {
    let mut c = Client::start(json!({}));
    let scratch = uri(&root().join("target/lsp-scratch/deep.blk"));
    let text = "model deep {\n    block = postln\n    depth = 72\n    width = 768\n    heads = 12\n    context = 128\n    \
                vocab = 50000\n    mask = causal\n    positions = learned\n    final_norm = layernorm\n    \
                tied_embeddings = true\n}\n\nblock postln {\n    h   = rmsnorm(x + attn(x))\n    out = rmsnorm(h + mlp(h))\n}\n";
    let diags = c.open(&scratch, text);
    let rejection = diags.iter().find(|d| d["code"] == "E3001").cloned().expect("rejected");
    let (fix, hover) = (c.next_id, c.next_id + 1);
    c.next_id += 2;
    let params =
        json!({ "textDocument": { "uri": scratch }, "range": rejection["range"], "context": { "diagnostics": [] } });
    c.send(&json!({ "jsonrpc": "2.0", "id": fix, "method": "textDocument/codeAction", "params": params.clone() }));
    let at = json!({ "textDocument": { "uri": scratch }, "position": { "line": 1, "character": 13 } });
    c.send(&json!({ "jsonrpc": "2.0", "id": hover, "method": "textDocument/hover", "params": at }));
    let mut order = Vec::new();
    let mut offered = Value::Null;
    while order.len() < 2 {
        let m = c.next();
        if m["id"] == json!(fix) || m["id"] == json!(hover) {
            assert!(m.get("error").is_none(), "{m}");
            if m["id"] == json!(fix) {
                offered = m["result"].clone();
            }
            order.push(m["id"].clone());
        } else {
            c.queued.push_back(m);
        }
    }
    assert_eq!(order, [json!(hover), json!(fix)], "the hover waited for the fix search");
    let first = &offered[0];
    assert!(first["title"].as_str().unwrap_or("").contains("beta_sa"), "{offered}");
    assert_eq!(first["diagnostics"][0]["code"], "E3001", "{first}");
    // Asked again for the same text: the same fix, from the search done.
    let again = c.request("textDocument/codeAction", params);
    assert_eq!(again, offered);
    c.shutdown();
}

/// Semantic tokens: each name coloured by what the index says it is — the
/// block and its params and bindings (declared, then used), the section
/// named in a call, setting keys, built-in functions and variables.
#[test]
fn names_are_coloured_by_what_they_are() {
    let mut c = Client::start(json!({}));
    let doc = uri(&root().join("target/lsp-scratch/tokens.blk"));
    let text = "attention shaped {\n    query = zeros\n}\n\nblock b {\n    param beta = 0.5 trainable\n    \
                h = x + beta * attn(rmsnorm(x), shaped)\n    out = h + mlp(rmsnorm(h))\n}\n";
    c.open(&doc, text);
    let legend = c.capabilities["semanticTokensProvider"]["legend"].clone();
    let name = |i: u64| legend["tokenTypes"][i as usize].as_str().unwrap_or("?").to_string();
    let result = c.request("textDocument/semanticTokens/full", json!({ "textDocument": { "uri": doc } }));
    let data: Vec<u64> =
        result["data"].as_array().cloned().unwrap_or_default().iter().filter_map(Value::as_u64).collect();
    assert_eq!(data.len() % 5, 0, "{result}");
    // (line, column, length, type, modifiers: 1 declaration, 2 built-in)
    let (mut line, mut col) = (0, 0);
    let mut tokens = Vec::new();
    for t in data.chunks(5) {
        line += t[0];
        col = if t[0] == 0 { col + t[1] } else { t[1] };
        tokens.push((line, col, t[2], name(t[3]), t[4]));
    }
    let at = |l: u64, c: u64| tokens.iter().find(|t| t.0 == l && t.1 == c).cloned();
    assert_eq!(at(0, 10), Some((0, 10, 6, "type".into(), 1)), "{tokens:?}");
    assert_eq!(at(1, 4), Some((1, 4, 5, "property".into(), 0)), "{tokens:?}");
    assert_eq!(at(4, 6), Some((4, 6, 1, "class".into(), 1)), "{tokens:?}");
    assert_eq!(at(5, 10), Some((5, 10, 4, "parameter".into(), 1)), "{tokens:?}");
    assert_eq!(at(6, 4), Some((6, 4, 1, "variable".into(), 1)), "{tokens:?}");
    assert_eq!(at(6, 8), Some((6, 8, 1, "variable".into(), 2)), "{tokens:?}");
    assert_eq!(at(6, 12), Some((6, 12, 4, "parameter".into(), 0)), "{tokens:?}");
    assert_eq!(at(6, 19), Some((6, 19, 4, "function".into(), 2)), "{tokens:?}");
    assert_eq!(at(6, 36), Some((6, 36, 6, "type".into(), 0)), "{tokens:?}");
    assert_eq!(at(7, 10), Some((7, 10, 1, "variable".into(), 0)), "{tokens:?}");
    c.shutdown();
}

#[test]
fn diagnostics_equal_the_clis_for_every_ui_case() {
    let mut cases = Vec::new();
    let mut dirs = vec![root().join("tests/ui")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("tests/ui").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "blk") && !p.components().any(|c| c.as_os_str() == "_lib") {
                cases.push(p);
            }
        }
    }
    cases.sort();
    assert!(cases.len() >= 40, "only {} ui cases", cases.len());
    let mut c = Client::start(json!({}));
    let mut compared = 0;
    for case in &cases {
        let rel = case.strip_prefix(root()).expect("inside").display().to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_blkc"))
            .args(["check", "--format", "github", &rel])
            .current_dir(root())
            .output()
            .expect("blkc check runs");
        let cli: Vec<Reported> = String::from_utf8_lossy(&out.stdout).lines().filter_map(github).collect();
        let text = std::fs::read_to_string(case).unwrap_or_default();
        let lsp = c.open(&uri(case), &text);
        assert_eq!(lsp.len(), cli.len(), "{rel}: the CLI reports {cli:#?}\nthe server {lsp:#?}");
        for (r, d) in cli.iter().zip(&lsp) {
            let severity = match r.level.as_str() {
                "error" => 1,
                "warning" => 2,
                _ => 3,
            };
            assert_eq!(d["severity"], severity, "{rel}: {r:?} vs {d}");
            // The server names files by absolute path, the CLI as given.
            let message = d["message"].as_str().unwrap_or("").replace(&format!("{}/", root().display()), "");
            let code = d["code"].as_str().unwrap_or("");
            if r.code.starts_with("expected ") {
                assert_eq!(code, r.code, "{rel}");
                assert_eq!(d["range"]["start"]["line"], r.line - 1, "{rel}");
                continue;
            }
            assert_eq!(code, r.code, "{rel}");
            let start = json!({ "line": r.line - 1, "character": utf16(&text, r.line, r.col) });
            if r.file == rel {
                assert!(message.starts_with(&r.message), "{rel}: `{message}` does not start with `{}`", r.message);
                assert_eq!(d["range"]["start"], start, "{rel}: {r:?}");
                if let Some((line, col)) = r.end {
                    let end = json!({ "line": line - 1, "character": utf16(&text, line, col) });
                    assert_eq!(d["range"]["end"], end, "{rel}: {r:?}");
                }
            } else {
                // In a used file: on the `use`, with the place as related information.
                assert!(message.contains(&r.message), "{rel}: `{message}` lacks `{}`", r.message);
                let related = &d["relatedInformation"][0]["location"];
                assert_eq!(related["uri"], uri(&root().join(&r.file)), "{rel}");
                let other = std::fs::read_to_string(root().join(&r.file)).unwrap_or_default();
                let start = json!({ "line": r.line - 1, "character": utf16(&other, r.line, r.col) });
                assert_eq!(related["range"]["start"], start, "{rel}");
            }
            compared += 1;
        }
    }
    assert!(compared >= 60, "only {compared} diagnostics compared");
    c.shutdown();
}

/// Input that is not LSP: a body that is not JSON-RPC is skipped (its
/// framing was sound, the session goes on); a header that claims 4 GB is
/// refused before anything is allocated, and the server exits 2 saying why.
#[test]
fn bad_input_is_skipped_or_refused_with_a_reason() {
    let mut child = server(Stdio::piped());
    let framed = |v: &str| format!("Content-Length: {}\r\n\r\n{v}", v.len());
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "capabilities": {} } });
    let symbols = json!({ "jsonrpc": "2.0", "id": 2, "method": "workspace/symbol", "params": { "query": "" } });
    let input = [
        framed(&init.to_string()),
        framed(&json!({ "jsonrpc": "2.0", "method": "initialized", "params": {} }).to_string()),
        framed("{not json"),
        framed(&symbols.to_string()),
        "Content-Length: 4000000000\r\n\r\n".to_string(),
    ]
    .concat();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write");
    drop(stdin);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(PATIENCE).expect("blkc lsp exits").expect("output");
    let mut stdout = BufReader::new(&out.stdout[..]);
    let answered: Vec<Value> = std::iter::from_fn(|| read_message(&mut stdout)).map(|m| m["id"].clone()).collect();
    assert!(answered.contains(&json!(1)) && answered.contains(&json!(2)), "{answered:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("skipped a message that is not JSON-RPC"), "{err}");
    assert!(err.contains("bad input from the client: Content-Length 4000000000 is over the limit of 64 MiB"), "{err}");
}

/// Rename and highlights: a param renamed at its declaration and every use; a section
/// renamed in the file that defines it (not open), in the one that uses
/// it, and in a workspace file (not open) that uses it too; refused, with the reason, for a built-in, a malformed name, and a
/// name the renamed program does not compile with.
#[test]
fn a_rename_changes_every_use_or_says_why_not() {
    let dir = std::env::temp_dir().join(format!("blkc-lsp-rename-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("more")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("lib.blk"), "attention sh {\n    query = zeros\n}\n").unwrap_or_else(|e| panic!("{e}"));
    // A file of the workspace that is not open and uses the section too.
    let other = "use \"../lib.blk\"\n\nblock c {\n    out = x + attn(x, sh)\n}\n";
    std::fs::write(dir.join("more/other.blk"), other).unwrap_or_else(|e| panic!("{e}"));
    let main = "use \"lib.blk\"\n\nblock b {\n    param beta = 0.5 trainable\n    \
                h = x + beta * attn(rmsnorm(x), sh)\n    out = h + beta * mlp(rmsnorm(h))\n}\n";
    std::fs::write(dir.join("main.blk"), main).unwrap_or_else(|e| panic!("{e}"));
    let (main_uri, lib_uri) = (uri(&dir.join("main.blk")), uri(&dir.join("lib.blk")));
    let other_uri = uri(&dir.join("more/other.blk"));
    let mut c = Client::start_in(&dir, json!({}));
    c.open(&main_uri, main);
    let at = |line: u32, character: u32, new: &str| json!({ "textDocument": { "uri": main_uri }, "position": { "line": line, "character": character }, "newName": new });
    // `beta` where it is used (line 4, column 12).
    let prepared = c.request("textDocument/prepareRename", at(4, 13, ""));
    assert_eq!(prepared["start"], json!({ "line": 4, "character": 12 }), "{prepared}");
    let edit = c.request("textDocument/rename", at(4, 13, "gain"));
    let edits = edit["changes"][&main_uri].as_array().cloned().unwrap_or_default();
    let lines: Vec<u64> = edits.iter().filter_map(|e| e["range"]["start"]["line"].as_u64()).collect();
    assert_eq!(lines, [3, 4, 5], "the declaration and both uses: {edit}");
    assert!(edits.iter().all(|e| e["newText"] == "gain"), "{edit}");
    // The section, from its use: its definition is in lib.blk, on disk.
    let edit = c.request("textDocument/rename", at(4, 36, "shaped2"));
    let lib = edit["changes"][&lib_uri].as_array().cloned().unwrap_or_default();
    assert_eq!(lib.len(), 1, "{edit}");
    assert_eq!(lib[0]["range"]["start"], json!({ "line": 0, "character": 10 }), "{edit}");
    assert_eq!(edit["changes"][&main_uri].as_array().map(Vec::len), Some(1), "{edit}");
    let elsewhere = edit["changes"][&other_uri].as_array().cloned().unwrap_or_default();
    assert_eq!(elsewhere.len(), 1, "the workspace file that uses it: {edit}");
    assert_eq!(elsewhere[0]["range"]["start"], json!({ "line": 3, "character": 22 }), "{edit}");
    // References: the definition, and the uses in both programs.
    let refs = c.request(
        "textDocument/references",
        json!({ "textDocument": { "uri": main_uri }, "position": { "line": 4, "character": 36 },
                "context": { "includeDeclaration": true } }),
    );
    let mut files: Vec<String> = refs
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["uri"].as_str().map(String::from))
        .collect();
    files.sort();
    let mut want = vec![lib_uri.clone(), main_uri.clone(), other_uri.clone()];
    want.sort();
    assert_eq!(files, want, "{refs}");
    // Refusals, each with its reason.
    for (line, character, new, says) in [
        (4, 8, "y", "built into the language"),
        (4, 13, "a-b", "not a name the language takes"),
        (4, 13, "x", "`x` is reserved"),
        (4, 4, "out", "would not compile"),
    ] {
        let m = c.answer("textDocument/rename", at(line, character, new));
        let message = m["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "rename at {line}:{character} to {new}: {m}");
    }
    // Highlights: the param's declaration (written) and uses (read); the
    // built-in `x` wherever it stands in this document.
    let highlight = |c: &mut Client, line: u32, character: u32| -> Vec<(u64, u64)> {
        let h = c.at("textDocument/documentHighlight", &main_uri, line, character);
        let h = h.as_array().cloned().unwrap_or_default();
        h.iter()
            .map(|h| (h["range"]["start"]["line"].as_u64().unwrap_or(99), h["kind"].as_u64().unwrap_or(0)))
            .collect()
    };
    assert_eq!(highlight(&mut c, 4, 13), [(3, 3), (4, 2), (5, 2)]);
    assert_eq!(highlight(&mut c, 4, 8), [(4, 2), (4, 2)]);
    let m = c.answer("textDocument/prepareRename", at(4, 8, ""));
    assert!(m["error"]["message"].as_str().is_some_and(|e| e.contains("`x` is built into")), "{m}");
    c.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
