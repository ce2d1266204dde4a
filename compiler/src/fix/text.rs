//! The fixer's text work: edits made to a file, and the line diff that
//! shows them.

use super::Edit;

/// `text` with `edits` (not overlapping) made; edits at one position are
/// made in the order given.
pub fn apply(text: &str, edits: &[Edit]) -> String {
    let mut order: Vec<&Edit> = edits.iter().collect();
    order.sort_by_key(|e| (e.start, e.end));
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for e in order {
        if e.start < at || e.end > text.len() {
            continue;
        }
        out.push_str(&text[at..e.start]);
        out.push_str(&e.text);
        at = e.end;
    }
    out.push_str(&text[at..]);
    out
}

/// A line diff of `a` and `b` with `context` unchanged lines around each
/// change: `(line in a, line in b, marker, text)`, marker `' '`, `'-'` or `'+'`;
/// `None` between hunks.
pub fn diff(a: &str, b: &str, context: usize) -> Vec<Option<(usize, usize, char, String)>> {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // The common prefix and suffix, then a longest common subsequence of
    // what is left (fixes change a few lines).
    let pre = x.iter().zip(&y).take_while(|(p, q)| p == q).count();
    let suf = x[pre..].iter().rev().zip(y[pre..].iter().rev()).take_while(|(p, q)| p == q).count();
    let (xm, ym) = (&x[pre..x.len() - suf], &y[pre..y.len() - suf]);
    let (n, m) = (xm.len(), ym.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if xm[i] == ym[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(usize, usize, char, String)> = (0..pre).map(|k| (k + 1, k + 1, ' ', x[k].to_string())).collect();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && xm[i] == ym[j] {
            ops.push((pre + i + 1, pre + j + 1, ' ', xm[i].to_string()));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push((pre + i + 1, pre + j + 1, '-', xm[i].to_string()));
            i += 1;
        } else {
            ops.push((pre + i + 1, pre + j + 1, '+', ym[j].to_string()));
            j += 1;
        }
    }
    for k in 0..suf {
        let (ia, ib) = (x.len() - suf + k, y.len() - suf + k);
        ops.push((ia + 1, ib + 1, ' ', x[ia].to_string()));
    }
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, o)| o.2 != ' ').map(|(k, _)| k).collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= context);
    let mut out = Vec::new();
    let mut last: Option<usize> = None;
    for (k, op) in ops.into_iter().enumerate() {
        if !near(k) {
            continue;
        }
        if last.is_some_and(|l| k > l + 1) {
            out.push(None);
        }
        out.push(Some(op));
        last = Some(k);
    }
    out
}
