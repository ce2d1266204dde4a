//! The tree-sitter grammar accepts what the compiler's grammar
//! (`grammar/blk.pest`) accepts, and finds the syntax errors it finds, on
//! every `.blk` file of the repository and on random edits of them; and the
//! trees have the shapes the highlighting queries expect.

use std::path::{Path, PathBuf};

use blkc::diag::Code;
use blkc::span::FileId;
use blkc_tests::repo;
use proptest::prelude::*;
use tree_sitter::{Node, Parser, Query, Tree};

/// Every `.blk` file of the repository's blocks, examples and tests
/// (helpers under `_` directories included), with its text.
fn corpus() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for dir in ["blocks", "examples", "tests", "tests/ui/use/_lib"] {
        files.extend(blkc_tests::blk_files(dir));
    }
    files.into_iter().map(|f| (f.clone(), std::fs::read_to_string(&f).unwrap_or_default())).collect()
}

fn parse(text: &str) -> Tree {
    let mut p = Parser::new();
    p.set_language(&tree_sitter_blk::LANGUAGE.into()).unwrap_or_else(|e| panic!("{e}"));
    p.parse(text, None).unwrap_or_else(|| panic!("no tree"))
}

/// The compiler's syntax verdict: `None` when it parses, else its
/// diagnostics, each with whether it is about the grammar. Its parser also
/// checks limits (nesting, operators in an expression) and values (a number
/// or a layer beyond what can be represented, a range bound not linear in
/// `depth`), which a grammar for editors leaves to the language server.
fn compiler(text: &str) -> Option<Vec<(String, bool)>> {
    let limit = |d: &blkc::diag::Diagnostic| {
        d.code == Code::E1005 || d.message.starts_with("expression too complex") || d.message.contains("too deeply")
    };
    let ds = blkc::syntax::parse(FileId(0), text).err()?;
    Some(ds.iter().map(|d| (format!("{}: {}", d.code.as_str(), d.message), !limit(d))).collect())
}

/// The first error or missing node, with its place.
fn first_error(n: Node) -> Option<String> {
    if n.is_error() || n.is_missing() {
        return Some(format!("{} at {}", n.to_sexp(), n.start_position()));
    }
    let mut c = n.walk();
    let children: Vec<Node> = n.children(&mut c).collect();
    children.into_iter().find_map(first_error)
}

#[test]
fn both_grammars_agree_on_every_file() {
    let files = corpus();
    assert!(files.len() > 100, "{} files", files.len());
    let (mut accepted, mut rejected, mut limits, mut differ) = (0, 0, 0, Vec::new());
    for (path, text) in &files {
        let tree = parse(text);
        let ts = first_error(tree.root_node());
        let name = path.strip_prefix(repo()).unwrap_or(path).display();
        match (compiler(text), ts) {
            (None, None) => accepted += 1,
            (None, Some(e)) => differ.push(format!("{name}: the compiler parses it, tree-sitter finds {e}")),
            (Some(found), None) => match found.iter().find(|(_, grammar)| *grammar) {
                Some((d, _)) => differ.push(format!("{name}: the compiler finds {d}, tree-sitter nothing")),
                None => limits += 1,
            },
            (Some(_), Some(_)) => rejected += 1,
        }
    }
    assert!(differ.is_empty(), "{} of {} files:\n{}", differ.len(), files.len(), differ.join("\n"));
    assert!(accepted > 80 && rejected > 15, "{accepted} files parse, {rejected} do not");
    assert_eq!(limits, 5, "files over the compiler's limits: tests/ui/parse/*_too_*, layer_range_bound");
}

/// Whether `text` has a number glued to a name (`7heads`, `1e`), outside
/// comments and strings. The compiler's grammar refuses it (a number may
/// not run into a letter); a tree-sitter grammar cannot say so without an
/// external scanner and reads a number then a name, which the language
/// server then diagnoses.
fn glued(text: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.lines().any(|line| {
        let mut code = String::new();
        let mut in_string = false;
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '#' if !in_string => break,
                '"' => in_string = !in_string,
                '\\' if in_string => {
                    chars.next();
                }
                _ if in_string => {}
                _ => code.push(c),
            }
        }
        let b: Vec<char> = code.chars().collect();
        let mut i = 0;
        while i < b.len() {
            let starts = (b[i].is_ascii_digit() || (b[i] == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit)))
                && (i == 0 || !ident(b[i - 1]) && b[i - 1] != '.');
            if !starts {
                i += 1;
                continue;
            }
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == '_') {
                i += 1;
            }
            if b.get(i) == Some(&'.') && b.get(i + 1) != Some(&'.') {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if matches!(b.get(i), Some('e' | 'E')) {
                let sign = usize::from(matches!(b.get(i + 1), Some('+' | '-')));
                if b.get(i + 1 + sign).is_some_and(char::is_ascii_digit) {
                    i += 1 + sign;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            if b.get(i).is_some_and(|&c| ident(c)) {
                return true;
            }
        }
        false
    })
}

#[test]
fn glued_numbers_are_found() {
    for t in ["w = 7heads", "w = 1e", "w = 2.5x", "w = .5_a", "w = 1e-3e"] {
        assert!(glued(t), "{t}");
    }
    for t in ["w = x1a", "w = 1e-3 # 3rd", "w = \"7a\"", "layer 0..depth { }", "w = 1_000", "w = 2.5 x"] {
        assert!(!glued(t), "{t}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, max_global_rejects: 1 << 20, ..ProptestConfig::default() })]

    /// Tree-sitter marks no error in what the compiler parses, and marks
    /// one in what the compiler's grammar refuses.
    #[test]
    fn both_grammars_agree_on_edited_files(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 1..6),
    ) {
        let files = CORPUS.get_or_init(corpus);
        let text = blkc_tests::mutate(&files[which.index(files.len())].1, &edits);
        prop_assume!(!glued(&text));
        let ts = first_error(parse(&text).root_node());
        match compiler(&text) {
            None => prop_assert!(ts.is_none(), "the compiler parses it, tree-sitter finds {ts:?}:\n{text}"),
            Some(found) => {
                if let Some((d, _)) = found.iter().find(|(_, grammar)| *grammar) {
                    prop_assert!(ts.is_some(), "the compiler finds {d}, tree-sitter nothing:\n{text}");
                }
            }
        }
    }
}

static CORPUS: std::sync::OnceLock<Vec<(PathBuf, String)>> = std::sync::OnceLock::new();

/// The queries editors load compile against the grammar (a node or field
/// name that is not in it is an error), and capture what they should.
#[test]
fn the_queries_fit_the_grammar() {
    let language = tree_sitter_blk::LANGUAGE.into();
    for (name, source) in [
        ("highlights", tree_sitter_blk::HIGHLIGHTS_QUERY),
        ("folds", tree_sitter_blk::FOLDS_QUERY),
        ("indents", tree_sitter_blk::INDENTS_QUERY),
    ] {
        let q = Query::new(&language, source).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(q.pattern_count() > 0, "{name}");
    }
    let text = std::fs::read_to_string(repo().join("blocks/sas-p.blk")).unwrap_or_default();
    let tree = parse(&text);
    let q = Query::new(&language, tree_sitter_blk::HIGHLIGHTS_QUERY).unwrap_or_else(|e| panic!("{e}"));
    let mut cursor = tree_sitter::QueryCursor::new();
    let mut seen = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut matches = cursor.matches(&q, tree.root_node(), text.as_bytes());
    while let Some(m) = tree_sitter::StreamingIterator::next(&mut matches) {
        for c in m.captures() {
            let name = q.capture_names()[c.index as usize].to_string();
            seen.entry(name).or_default().push(text[c.node.byte_range()].to_string());
        }
    }
    let has = |capture: &str, word: &str| seen.get(capture).is_some_and(|v| v.iter().any(|w| w == word));
    for (capture, word) in [
        ("keyword", "block"),
        ("keyword", "param"),
        ("keyword.modifier", "trainable"),
        ("type", "sas_p"),
        ("variable.parameter", "beta_sa"),
        ("function.call", "rmsnorm"),
        ("variable.builtin", "x"),
        ("comment", "# O(1/sqrt(depth)), §4.3"),
    ] {
        assert!(has(capture, word), "`{word}` is not @{capture}: {seen:?}");
    }
}

/// The trees of `test/corpus/*.txt` (tree-sitter's own test format: a
/// title between `===` lines, the source, `---`, the tree) are the
/// parser's, as `tree-sitter test` checks them where the CLI is installed.
#[test]
fn the_corpus_trees_are_the_parser_s() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test/corpus");
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")).flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_else(|e| panic!("{e}"));
        let rule = |l: &str, c: char| l.len() >= 3 && l.chars().all(|x| x == c);
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if !rule(lines[i], '=') {
                i += 1;
                continue;
            }
            let title = lines[i + 1];
            let body = i + 3;
            let dash = (body..lines.len()).find(|&k| rule(lines[k], '-')).unwrap_or_else(|| panic!("{title}: no ---"));
            let next = (dash..lines.len()).find(|&k| rule(lines[k], '=')).unwrap_or(lines.len());
            let source = lines[body..dash].join("\n");
            let want: String = lines[dash + 1..next].join(" ");
            let squeeze =
                |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").replace("( ", "(").replace(" )", ")");
            assert_eq!(squeeze(&parse(&source).root_node().to_sexp()), squeeze(&want), "{title}");
            cases += 1;
            i = next;
        }
    }
    assert!(cases >= 4, "{cases} cases");
}

/// Every rule of `grammar.js` is in the generated `src/grammar.json`: the
/// parser was generated again after a rule was added or renamed.
#[test]
fn the_parser_was_generated_from_the_grammar() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let js = std::fs::read_to_string(root.join("grammar.js")).unwrap_or_else(|e| panic!("{e}"));
    let json = std::fs::read_to_string(root.join("src/grammar.json")).unwrap_or_else(|e| panic!("{e}"));
    let rules: Vec<&str> = js
        .lines()
        .filter_map(|l| l.trim().split_once(": $ =>").or_else(|| l.trim().split_once(": _ =>")))
        .map(|(name, _)| name)
        .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    assert!(rules.len() > 20, "{rules:?}");
    for r in rules {
        if !["extras", "word", "conflicts"].contains(&r) {
            assert!(
                json.contains(&format!("\"{r}\": {{")),
                "`{r}` is not in src/grammar.json: run `tree-sitter generate`"
            );
        }
    }
}
