//! The server loop: documents in, diagnostics out (debounced while the
//! user types), requests answered from the latest analysis, or from the
//! last one whose file parsed when the file is broken. A quick fix is
//! searched on a worker thread: its request is answered when the search
//! ends, and the others meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use lsp_server::{Connection, ErrorCode, Message, Notification, Request, RequestId, Response};
use lsp_types::notification::{self as note, Notification as _};
use lsp_types::request::{self as req, Request as _};
use lsp_types::{
    CodeAction, CodeActionKind, CodeActionOrCommand, CodeActionProviderCapability, CompletionOptions,
    CompletionResponse, DocumentSymbolResponse, GotoDefinitionResponse, Hover, HoverContents, HoverProviderCapability,
    Location, MarkupContent, MarkupKind, OneOf, Position, PublishDiagnosticsParams, ServerCapabilities,
    TextDocumentSyncCapability, TextDocumentSyncKind, TextEdit, Url,
};

use blkc::Loader;

use crate::analysis::{Analysis, Options};
use crate::index::Target;
use crate::text::Lines;
use crate::workspace::{path_of, Document, Documents};
use crate::{complete, hover, symbols};

/// How long the user must pause typing before a changed document is
/// analysed again.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// How long a quick fix is searched for (on its own thread: the editor
/// waits for the light bulb, not for its other answers).
pub const FIX_BUDGET: Duration = Duration::from_secs(5);

/// A quick-fix search that ended: the document, its version, the actions.
type Found = (PathBuf, i32, Vec<CodeAction>);

/// A code-action request waiting for a search, with the rejections it
/// touches.
type Waiting = (RequestId, Vec<lsp_types::Diagnostic>);

/// What the server loop wakes up for.
enum Event {
    Message(Message),
    Found(Found),
    /// A changed document's pause is over.
    Due,
    /// The client went away.
    Gone,
}

/// What the server tells the client it can do.
pub fn capabilities() -> ServerCapabilities {
    ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Kind(TextDocumentSyncKind::FULL)),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        definition_provider: Some(OneOf::Left(true)),
        references_provider: Some(OneOf::Left(true)),
        document_highlight_provider: Some(OneOf::Left(true)),
        rename_provider: Some(OneOf::Right(lsp_types::RenameOptions {
            prepare_provider: Some(true),
            work_done_progress_options: Default::default(),
        })),
        document_formatting_provider: Some(OneOf::Left(true)),
        document_symbol_provider: Some(OneOf::Left(true)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some(vec!["=".into(), "(".into(), " ".into()]),
            ..CompletionOptions::default()
        }),
        inlay_hint_provider: Some(OneOf::Left(true)),
        code_action_provider: Some(CodeActionProviderCapability::Simple(true)),
        semantic_tokens_provider: Some(lsp_types::SemanticTokensServerCapabilities::SemanticTokensOptions(
            lsp_types::SemanticTokensOptions {
                legend: crate::semantic::legend(),
                full: Some(lsp_types::SemanticTokensFullOptions::Bool(true)),
                ..Default::default()
            },
        )),
        ..ServerCapabilities::default()
    }
}

/// Most workspace files looked at for references and renames.
const WORKSPACE_FILES: usize = 2000;

/// The server's state between messages.
pub struct Server<'c> {
    conn: &'c Connection,
    docs: Documents,
    options: Options,
    /// The latest analysis of each open document.
    latest: HashMap<PathBuf, Rc<Analysis>>,
    /// The latest analysis whose root file parsed.
    good: HashMap<PathBuf, Rc<Analysis>>,
    /// Changed documents and when to analyse them.
    due: BTreeMap<PathBuf, Instant>,
    /// The quick fixes last searched for each document, with its version.
    fixed: HashMap<PathBuf, (i32, Vec<CodeAction>)>,
    /// The search under way for a document (one at a time): the version
    /// searched, and the code-action requests waiting for it.
    searching: HashMap<PathBuf, (i32, Vec<Waiting>)>,
    /// Where searches report.
    found: (Sender<Found>, Receiver<Found>),
    /// The folder the editor opened: its `.blk` files are searched for
    /// references and renamed with the open ones.
    workspace: Option<PathBuf>,
}

impl std::fmt::Debug for Server<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("docs", &self.docs).field("options", &self.options).finish_non_exhaustive()
    }
}

impl<'c> Server<'c> {
    pub fn new(conn: &'c Connection, options: Options) -> Self {
        Server {
            conn,
            docs: Documents::default(),
            options,
            latest: HashMap::new(),
            good: HashMap::new(),
            due: BTreeMap::new(),
            fixed: HashMap::new(),
            searching: HashMap::new(),
            workspace: None,
            found: crossbeam_channel::unbounded(),
        }
    }

    /// Serves until the client says `exit` (or goes away).
    pub fn run(&mut self) -> Result<(), String> {
        loop {
            let msg = match self.next_event() {
                Event::Message(m) => m,
                Event::Found(f) => {
                    self.answer_fixes(f);
                    continue;
                }
                Event::Due => {
                    self.analyse_due();
                    continue;
                }
                Event::Gone => return Ok(()),
            };
            match msg {
                Message::Request(r) => {
                    if self.conn.handle_shutdown(&r).map_err(|e| e.to_string())? {
                        return Ok(());
                    }
                    if let Some(response) = self.request(r) {
                        self.send(Message::Response(response));
                    }
                }
                Message::Notification(n) if n.method == note::Exit::METHOD => return Ok(()),
                Message::Notification(n) => self.notification(n),
                Message::Response(_) => {}
            }
        }
    }

    /// Waits for a message, a search's end, or the next analysis due.
    fn next_event(&self) -> Event {
        let message = |m: Result<Message, _>| m.map_or(Event::Gone, Event::Message);
        let found = |f: Result<Found, _>| f.map_or(Event::Gone, Event::Found);
        match self.due.values().min().map(|t| t.saturating_duration_since(Instant::now())) {
            Some(wait) => crossbeam_channel::select! {
                recv(self.conn.receiver) -> m => message(m),
                recv(self.found.1) -> f => found(f),
                default(wait) => Event::Due,
            },
            None => crossbeam_channel::select! {
                recv(self.conn.receiver) -> m => message(m),
                recv(self.found.1) -> f => found(f),
            },
        }
    }

    fn send(&self, m: Message) {
        // The client is gone when this fails; the loop ends at the next receive.
        let _ = self.conn.sender.send(m);
    }

    fn notification(&mut self, n: Notification) {
        match n.method.as_str() {
            note::DidOpenTextDocument::METHOD => {
                let Ok(p) = serde_json::from_value::<lsp_types::DidOpenTextDocumentParams>(n.params) else { return };
                let d = p.text_document;
                let path = self.docs.open(Document { uri: d.uri, text: d.text, version: d.version });
                self.analyse(&path);
            }
            note::DidChangeTextDocument::METHOD => {
                let Ok(p) = serde_json::from_value::<lsp_types::DidChangeTextDocumentParams>(n.params) else { return };
                let path = path_of(&p.text_document.uri);
                let Some(doc) = self.docs.get_mut(&path) else { return };
                // Full sync: the last change holds the whole text.
                if let Some(change) = p.content_changes.into_iter().last() {
                    doc.text = change.text;
                    doc.version = p.text_document.version;
                    self.due.insert(path, Instant::now() + DEBOUNCE);
                }
            }
            note::DidSaveTextDocument::METHOD => {
                let Ok(p) = serde_json::from_value::<lsp_types::DidSaveTextDocumentParams>(n.params) else { return };
                let path = path_of(&p.text_document.uri);
                if self.docs.get(&path).is_some() {
                    self.analyse(&path);
                }
            }
            note::DidCloseTextDocument::METHOD => {
                let Ok(p) = serde_json::from_value::<lsp_types::DidCloseTextDocumentParams>(n.params) else { return };
                if let Some(d) = self.docs.close(&p.text_document.uri) {
                    let path = path_of(&d.uri);
                    self.latest.remove(&path);
                    self.good.remove(&path);
                    self.due.remove(&path);
                    self.publish(d.uri, Vec::new(), None);
                }
            }
            note::DidChangeConfiguration::METHOD => {
                let Ok(p) = serde_json::from_value::<lsp_types::DidChangeConfigurationParams>(n.params) else { return };
                let value = p.settings.get("blkc").cloned().unwrap_or(p.settings);
                if let Ok(options) = serde_json::from_value::<Options>(value) {
                    self.options = options;
                    let all: Vec<PathBuf> = self.docs.paths().cloned().collect();
                    for path in all {
                        self.analyse(&path);
                    }
                }
            }
            _ => {}
        }
    }

    fn analyse_due(&mut self) {
        let now = Instant::now();
        let ready: Vec<PathBuf> = self.due.iter().filter(|(_, t)| **t <= now).map(|(p, _)| p.clone()).collect();
        for path in ready {
            self.analyse(&path);
        }
    }

    /// Analyses one document, publishes its diagnostics, then does the same
    /// for every other open document that `use`s it.
    fn analyse(&mut self, path: &Path) {
        self.one(path);
        let dependents: Vec<PathBuf> = self
            .latest
            .iter()
            .filter(|(p, a)| p.as_path() != path && a.paths().any(|q| q == path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in dependents {
            self.one(&p);
        }
    }

    fn one(&mut self, path: &Path) {
        self.due.remove(path);
        let Some(doc) = self.docs.get(path) else { return };
        let (uri, version) = (doc.uri.clone(), doc.version);
        let analysed = catch_unwind(AssertUnwindSafe(|| Analysis::of(path, &self.docs, self.options)));
        let Ok(Some(a)) = analysed else {
            // A log line an editor may not read: dropped if stderr is gone.
            let _ = writeln!(std::io::stderr(), "blkc lsp: the analysis of {} failed", path.display());
            return;
        };
        let a = Rc::new(a);
        let diagnostics = a.lsp_diagnostics(&self.docs);
        if a.parsed() {
            self.good.insert(path.to_path_buf(), a.clone());
        }
        self.latest.insert(path.to_path_buf(), a);
        self.publish(uri, diagnostics, Some(version));
    }

    fn publish(&self, uri: Url, diagnostics: Vec<lsp_types::Diagnostic>, version: Option<i32>) {
        let params = PublishDiagnosticsParams { uri, diagnostics, version };
        self.send(Message::Notification(Notification::new(note::PublishDiagnostics::METHOD.into(), params)));
    }

    /// Answers one request (`None`: later, when its search ends); a handler
    /// that panics answers an error and the server goes on.
    fn request(&mut self, r: Request) -> Option<Response> {
        let id = r.id.clone();
        if let Some(uri) = r.params.pointer("/textDocument/uri").and_then(|u| u.as_str()) {
            if let Ok(uri) = Url::parse(uri) {
                let path = path_of(&uri);
                if self.due.contains_key(&path) {
                    self.analyse(&path);
                }
            }
        }
        if r.method == req::CodeActionRequest::METHOD {
            let p: lsp_types::CodeActionParams = match params(&r) {
                Ok(p) => p,
                Err((code, message)) => return Some(Response::new_err(id, code as i32, message)),
            };
            let fixes = catch_unwind(AssertUnwindSafe(|| self.fixes(id.clone(), &p.text_document.uri, p.range)));
            return match fixes {
                Ok(actions) => Some(Response { id, result: Some(json(actions?)), error: None }),
                Err(_) => {
                    Some(Response::new_err(id, ErrorCode::InternalError as i32, "blkc lsp: the fix failed".into()))
                }
            };
        }
        let answer = catch_unwind(AssertUnwindSafe(|| self.answer(&r)));
        Some(match answer {
            Ok(Ok(value)) => Response { id, result: Some(value), error: None },
            Ok(Err((code, message))) => Response::new_err(id, code as i32, message),
            Err(_) => {
                Response::new_err(id, ErrorCode::InternalError as i32, format!("blkc lsp: `{}` failed", r.method))
            }
        })
    }

    fn answer(&self, r: &Request) -> Result<serde_json::Value, (ErrorCode, String)> {
        let value = match r.method.as_str() {
            req::HoverRequest::METHOD => {
                let p: lsp_types::HoverParams = params(r)?;
                json(self.hover(
                    &p.text_document_position_params.text_document.uri,
                    p.text_document_position_params.position,
                ))
            }
            req::GotoDefinition::METHOD => {
                let p: lsp_types::GotoDefinitionParams = params(r)?;
                let tdp = p.text_document_position_params;
                json(self.definition(&tdp.text_document.uri, tdp.position).map(GotoDefinitionResponse::Scalar))
            }
            req::References::METHOD => {
                let p: lsp_types::ReferenceParams = params(r)?;
                let tdp = p.text_document_position;
                json(self.references(&tdp.text_document.uri, tdp.position, p.context.include_declaration))
            }
            req::DocumentHighlightRequest::METHOD => {
                let p: lsp_types::DocumentHighlightParams = params(r)?;
                let tdp = p.text_document_position_params;
                json(self.highlights(&tdp.text_document.uri, tdp.position))
            }
            req::PrepareRenameRequest::METHOD => {
                let p: lsp_types::TextDocumentPositionParams = params(r)?;
                json(self.prepare_rename(&p.text_document.uri, p.position)?)
            }
            req::Rename::METHOD => {
                let p: lsp_types::RenameParams = params(r)?;
                let tdp = p.text_document_position;
                json(self.rename(&tdp.text_document.uri, tdp.position, &p.new_name)?)
            }
            req::Formatting::METHOD => {
                let p: lsp_types::DocumentFormattingParams = params(r)?;
                json(self.format(&p.text_document.uri))
            }
            req::DocumentSymbolRequest::METHOD => {
                let p: lsp_types::DocumentSymbolParams = params(r)?;
                let a = self.parsed(&path_of(&p.text_document.uri));
                json(a.map(|a| DocumentSymbolResponse::Nested(symbols::outline(&a))))
            }
            req::Completion::METHOD => {
                let p: lsp_types::CompletionParams = params(r)?;
                let tdp = p.text_document_position;
                json(self.complete(&tdp.text_document.uri, tdp.position).map(CompletionResponse::Array))
            }
            req::SemanticTokensFullRequest::METHOD => {
                let p: lsp_types::SemanticTokensParams = params(r)?;
                let a = self.parsed(&path_of(&p.text_document.uri));
                json(a.map(|a| {
                    lsp_types::SemanticTokensResult::Tokens(lsp_types::SemanticTokens {
                        result_id: None,
                        data: crate::semantic::tokens(&a),
                    })
                }))
            }
            req::InlayHintRequest::METHOD => {
                let p: lsp_types::InlayHintParams = params(r)?;
                let a = self.latest.get(&path_of(&p.text_document.uri));
                json(a.map(|a| symbols::hints(a)))
            }
            other => return Err((ErrorCode::MethodNotFound, format!("blkc lsp does not answer `{other}`"))),
        };
        Ok(value)
    }

    /// The same server, searching `root`'s `.blk` files for references.
    pub fn in_workspace(mut self, root: Option<PathBuf>) -> Self {
        self.workspace = root.filter(|r| r.is_dir());
        self
    }

    /// The programs, other than `here`'s, that may use definition `def`
    /// of `a`: the open documents' (their last parse), and, for a block or
    /// a section (a param or a binding is used in its own block only),
    /// those of the workspace's files that are not open and mention its
    /// name (names and syntax only; at most [`WORKSPACE_FILES`] files
    /// looked at).
    fn other_programs(&self, here: &Path, a: &Analysis, def: usize) -> Vec<Rc<Analysis>> {
        let mut out: Vec<Rc<Analysis>> =
            self.docs.paths().filter(|p| **p != here).filter_map(|p| self.parsed(p)).collect();
        let d = &a.index.defs[def];
        let (def_path, name) = (&a.compilation.sources.get(d.span.file).path, &d.name);
        let Some(root) = self.workspace.as_ref().filter(|_| d.parent.is_none()) else { return out };
        let syntax = Options { syntax_only: true, ..self.options };
        for file in blkc::source::blk_files(root, WORKSPACE_FILES).files {
            if file == here || self.docs.get(&file).is_some() {
                continue;
            }
            let mentions = std::fs::read_to_string(&file).is_ok_and(|t| t.contains(name));
            if !mentions {
                continue;
            }
            if let Some(other) = Analysis::of(&file, &self.docs, syntax) {
                if other.parsed() && other.file(def_path).is_some() {
                    out.push(Rc::new(other));
                }
            }
        }
        out
    }

    /// The analysis to answer from: the latest, or the last that parsed.
    fn parsed(&self, path: &Path) -> Option<Rc<Analysis>> {
        match self.latest.get(path) {
            Some(a) if a.parsed() => Some(a.clone()),
            _ => self.good.get(path).cloned(),
        }
    }

    /// The analysis of `uri` and the byte offset of `pos` in its root text.
    fn at(&self, uri: &Url, pos: Position) -> Option<(Rc<Analysis>, u32)> {
        let a = self.parsed(&path_of(uri))?;
        let offset = a.lines(blkc::span::FileId(0)).offset(pos);
        Some((a, offset as u32))
    }

    fn hover(&self, uri: &Url, pos: Position) -> Option<Hover> {
        let (a, offset) = self.at(uri, pos)?;
        let here = path_of(uri);
        let others: Vec<Rc<Analysis>> =
            self.docs.paths().filter(|p| **p != here).filter_map(|p| self.parsed(p)).collect();
        let others: Vec<&Analysis> = others.iter().map(|o| o.as_ref()).collect();
        let (text, span) = hover::hover(&a, &others, blkc::span::FileId(0), offset)?;
        Some(Hover {
            contents: HoverContents::Markup(MarkupContent { kind: MarkupKind::Markdown, value: text }),
            range: Some(a.range(span)),
        })
    }

    fn definition(&self, uri: &Url, pos: Position) -> Option<Location> {
        let (a, offset) = self.at(uri, pos)?;
        let root = blkc::span::FileId(0);
        // A `use`'s path: the file it names.
        if let Some((_, f)) = a.compilation.files.iter().find(|(id, _)| *id == root) {
            for item in &f.items {
                if let blkc::syntax::ast::Item::Use(u) = item {
                    if u.path.span.start <= offset && offset <= u.path.span.end {
                        let dir = a.root.parent().map(Path::to_path_buf).unwrap_or_default();
                        let path = blkc::source::normalise(&dir.join(&u.path.value));
                        let uri = crate::workspace::uri_of(&path, &self.docs)?;
                        return Some(Location::new(uri, lsp_types::Range::default()));
                    }
                }
            }
        }
        match a.index.at(root, offset)?.target {
            Target::Def(i) => a.location(a.index.defs[i].span, &self.docs),
            _ => None,
        }
    }

    /// Every use of the definition under the cursor, in every open
    /// document's program.
    fn references(&self, uri: &Url, pos: Position, declaration: bool) -> Option<Vec<Location>> {
        let (a, offset) = self.at(uri, pos)?;
        let Target::Def(i) = a.index.at(blkc::span::FileId(0), offset)?.target else { return None };
        let def = &a.index.defs[i];
        let def_path = a.compilation.sources.get(def.span.file).path.clone();
        let mut out: Vec<Location> = Vec::new();
        let here = path_of(uri);
        let others = self.other_programs(&here, &a, i);
        for other in std::iter::once(a.clone()).chain(others) {
            let Some(file) = other.file(&def_path) else { continue };
            let same = other.index.defs.iter().position(|d| d.span.file == file && d.span.start == def.span.start);
            let Some(j) = same else { continue };
            for o in other.index.uses(j) {
                let is_declaration = o.span.file == file && o.span.start == def.span.start;
                if is_declaration && !declaration {
                    continue;
                }
                if let Some(l) = other.location(o.span, &self.docs) {
                    if !out.contains(&l) {
                        out.push(l);
                    }
                }
            }
        }
        Some(out)
    }

    /// The occurrences in this document of what the name under the cursor
    /// means: a definition's (its declaration written, its uses read), or
    /// a built-in's or setting's of the same spelling.
    fn highlights(&self, uri: &Url, pos: Position) -> Option<Vec<lsp_types::DocumentHighlight>> {
        let (a, offset) = self.at(uri, pos)?;
        let root = blkc::span::FileId(0);
        let here = a.index.at(root, offset)?;
        let same = |o: &crate::index::Occurrence| match here.target {
            Target::Def(_) => o.target == here.target,
            Target::Builtin | Target::Setting(_) => o.target == here.target && o.name == here.name,
            Target::Unknown => false,
        };
        let out = a
            .index
            .occurrences
            .iter()
            .filter(|o| o.span.file == root && same(o))
            .map(|o| {
                let declared = matches!(o.target, Target::Def(i) if a.index.defs[i].span.file == o.span.file
                    && a.index.defs[i].span.start == o.span.start);
                lsp_types::DocumentHighlight {
                    range: a.range(o.span),
                    kind: Some(if declared {
                        lsp_types::DocumentHighlightKind::WRITE
                    } else {
                        lsp_types::DocumentHighlightKind::READ
                    }),
                }
            })
            .collect();
        Some(out)
    }

    /// The name under the cursor, when it is one that can be renamed.
    fn prepare_rename(
        &self,
        uri: &Url,
        pos: Position,
    ) -> Result<Option<lsp_types::PrepareRenameResponse>, (ErrorCode, String)> {
        let Some((a, offset)) = self.at(uri, pos) else { return Ok(None) };
        crate::rename::target(&a, offset).map_err(|e| (ErrorCode::RequestFailed, e))?;
        let Some(o) = a.index.at(blkc::span::FileId(0), offset) else { return Ok(None) };
        Ok(Some(lsp_types::PrepareRenameResponse::Range(a.range(o.span))))
    }

    /// Every occurrence of the definition under the cursor renamed, in
    /// every open document's program (see [`crate::rename`]).
    fn rename(
        &self,
        uri: &Url,
        pos: Position,
        new: &str,
    ) -> Result<Option<lsp_types::WorkspaceEdit>, (ErrorCode, String)> {
        let Some((a, offset)) = self.at(uri, pos) else { return Ok(None) };
        let failed = |e: String| (ErrorCode::RequestFailed, e);
        let def = crate::rename::target(&a, offset).map_err(failed)?;
        let here = path_of(uri);
        let others = self.other_programs(&here, &a, def);
        let others: Vec<&Analysis> = others.iter().map(|o| o.as_ref()).collect();
        let edits = crate::rename::occurrences(&a, def, &others);
        let def_path = a.compilation.sources.get(a.index.defs[def].span.file).path.clone();
        let all: Vec<&Analysis> = std::iter::once(a.as_ref()).chain(others.iter().copied()).collect();
        let roots = crate::rename::roots_holding(&def_path, &all);
        // The text each occurrence was found in: the editor's, or the file
        // as the analysis read it (not read again: it may have changed on
        // disk since, and the ranges are of this text).
        let mut texts = std::collections::BTreeMap::new();
        for path in edits.keys() {
            let held = all.iter().find_map(|a| a.file(path).map(|f| a.compilation.sources.get(f).text.to_string()));
            let text = match (self.docs.get(path), held) {
                (Some(d), _) => d.text.clone(),
                (None, Some(t)) => t,
                (None, None) => blkc::FsLoader.load(path).map_err(failed)?,
            };
            texts.insert(path.clone(), text);
        }
        crate::rename::check(&a, def, new, &edits, &texts, &roots, &self.docs).map_err(failed)?;
        let mut changes = std::collections::HashMap::new();
        for (path, spans) in &edits {
            let Some(uri) = crate::workspace::uri_of(path, &self.docs) else { continue };
            let Some(text) = texts.get(path) else { continue };
            let lines = Lines::new(text);
            let edits: Vec<TextEdit> = spans
                .iter()
                .map(|&(start, end)| TextEdit {
                    range: lines.range(start as usize, end as usize),
                    new_text: new.to_string(),
                })
                .collect();
            changes.insert(uri, edits);
        }
        Ok(Some(lsp_types::WorkspaceEdit { changes: Some(changes), ..Default::default() }))
    }

    /// `blkc fmt`'s layout as one edit; nothing when the text does not parse.
    fn format(&self, uri: &Url) -> Option<Vec<TextEdit>> {
        let doc = self.docs.get(&path_of(uri))?;
        let (_, parsed) = blkc::load::load_text("document", &doc.text);
        let formatted = blkc::syntax::format::format(&parsed.ok()?, &doc.text);
        if formatted == doc.text {
            return Some(Vec::new());
        }
        Some(vec![TextEdit { range: Lines::new(&doc.text).all(), new_text: formatted }])
    }

    /// Quick fixes of a rejection under `range` (`blkc check --fix`): the
    /// cheapest set of changes that makes the block pass, preferred, then
    /// the other sets that pass; each one edit of the text between the
    /// first and the last character it changes. Searched only when `range`
    /// touches a rejection, once per version of the document, on a worker
    /// thread: `None` when request `id` is answered once it ends. One
    /// search at a time per document: asked about another version of it
    /// meanwhile, nothing (the editor asks again).
    fn fixes(&mut self, id: RequestId, uri: &Url, range: lsp_types::Range) -> Option<Vec<CodeActionOrCommand>> {
        let path = path_of(uri);
        let Some(doc) = self.docs.get(&path) else { return Some(Vec::new()) };
        let Some(a) = self.latest.get(&path) else { return Some(Vec::new()) };
        let rejections: Vec<lsp_types::Diagnostic> = a
            .lsp_diagnostics(&self.docs)
            .into_iter()
            .filter(|d| d.severity == Some(lsp_types::DiagnosticSeverity::ERROR))
            .filter(|d| matches!(&d.code, Some(lsp_types::NumberOrString::String(c)) if c.starts_with("E3")))
            .filter(|d| d.range.start <= range.end && range.start <= d.range.end)
            .collect();
        if rejections.is_empty() || a.syntax_only {
            return Some(Vec::new());
        }
        let version = doc.version;
        if let Some((v, actions)) = self.fixed.get(&path) {
            if *v == version {
                return Some(for_rejections(actions, &rejections));
            }
        }
        match self.searching.get_mut(&path) {
            Some((v, waiting)) if *v == version => waiting.push((id, rejections)),
            Some(_) => return Some(Vec::new()),
            None => {
                self.searching.insert(path.clone(), (version, vec![(id, rejections)]));
                let (docs, depth, tx) = (self.docs.clone(), self.options.depth, self.found.0.clone());
                let uri = uri.clone();
                std::thread::spawn(move || {
                    let actions =
                        catch_unwind(AssertUnwindSafe(|| search(&docs, &path, &uri, depth))).unwrap_or_default();
                    // The server is gone when this fails.
                    let _ = tx.send((path, version, actions));
                });
            }
        }
        None
    }

    /// A search ended: its actions are kept for that version and answer
    /// the requests that wait for them — with nothing if the document has
    /// changed since (its edits would land on another text).
    fn answer_fixes(&mut self, (path, version, actions): Found) {
        let current = self.docs.get(&path).is_some_and(|d| d.version == version);
        let (_, waiting) = self.searching.remove(&path).unwrap_or_default();
        for (id, rejections) in waiting {
            let answer = if current { for_rejections(&actions, &rejections) } else { Vec::new() };
            self.send(Message::Response(Response { id, result: Some(json(answer)), error: None }));
        }
        self.fixed.insert(path, (version, actions));
    }

    fn complete(&self, uri: &Url, pos: Position) -> Option<Vec<lsp_types::CompletionItem>> {
        let path = path_of(uri);
        let doc = self.docs.get(&path)?;
        let offset = Lines::new(&doc.text).offset(pos);
        let a = self.parsed(&path);
        Some(complete::complete(&doc.text, offset, a.as_deref()))
    }
}

/// The quick fixes for the rejection of the document at `path` (the open
/// documents as `docs` holds them), as code actions without their
/// diagnostics.
fn search(docs: &Documents, path: &Path, uri: &Url, depth: Option<u64>) -> Vec<CodeAction> {
    let request = blkc::signal::report::Request { depth, ..Default::default() };
    let overlay = crate::workspace::Overlay(docs);
    let found = blkc::fix::fix(path, &overlay, &[], &request, FIX_BUDGET).unwrap_or_default();
    let Some(text) = docs.get(path).map(|d| d.text.clone()) else { return Vec::new() };
    let mut actions = Vec::new();
    for o in found {
        let blkc::fix::Outcome::Fixed { block, fix, others } = o else { continue };
        for (k, f) in std::iter::once(fix).chain(others).enumerate() {
            // The block may be defined in a `use`d file: the edit is there.
            let (target, before) = if f.file == path {
                (uri.clone(), text.clone())
            } else {
                let Some(target) = crate::workspace::uri_of(&f.file, docs) else { continue };
                let Ok(before) = overlay.load(&f.file) else { continue };
                if blkc::expect::expects_rejection(&before) {
                    continue;
                }
                (target, before)
            };
            let edit = crate::text::replacement(&before, &f.text);
            let place = if f.file == path { String::new() } else { format!(" (in {})", f.file.display()) };
            let changes = HashMap::from([(target, vec![edit])]);
            actions.push(CodeAction {
                title: format!("blkc: make `{block}` pass{place}: {}", f.changes.join("; ")),
                kind: Some(CodeActionKind::QUICKFIX),
                edit: Some(lsp_types::WorkspaceEdit { changes: Some(changes), ..Default::default() }),
                is_preferred: Some(k == 0),
                ..CodeAction::default()
            });
        }
        // One block at a time: the next is fixed once this one is.
        break;
    }
    actions
}

/// `actions` as the answer to a request about `rejections`.
fn for_rejections(actions: &[CodeAction], rejections: &[lsp_types::Diagnostic]) -> Vec<CodeActionOrCommand> {
    actions
        .iter()
        .map(|a| CodeActionOrCommand::CodeAction(CodeAction { diagnostics: Some(rejections.to_vec()), ..a.clone() }))
        .collect()
}

fn params<P: serde::de::DeserializeOwned>(r: &Request) -> Result<P, (ErrorCode, String)> {
    serde_json::from_value(r.params.clone()).map_err(|e| (ErrorCode::InvalidParams, e.to_string()))
}

fn json<T: serde::Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}
