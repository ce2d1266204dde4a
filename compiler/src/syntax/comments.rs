//! Collects `#` comments from source text (outside strings), for the
//! formatter. The grammar treats comments as whitespace.

/// One comment: its byte range (from `#` to the end of the line, newline
/// excluded) and whether it is alone on its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub start: usize,
    pub end: usize,
    pub own_line: bool,
}

impl Comment {
    pub fn text<'a>(&self, src: &'a str) -> &'a str {
        src[self.start..self.end].trim_end()
    }
}

/// Every comment of `src`, in order.
pub fn collect(src: &str) -> Vec<Comment> {
    let mut out = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut line_start = 0;
    let mut iter = src.char_indices();
    while let Some((i, c)) = iter.next() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') | (_, '\n') => in_string = false,
                _ => escaped = false,
            }
            if c == '\n' {
                line_start = i + 1;
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '\n' => line_start = i + 1,
            '#' => {
                let end = src[i..].find('\n').map_or(src.len(), |n| i + n);
                let own_line = src[line_start..i].trim().is_empty();
                out.push(Comment { start: i, end, own_line });
                for _ in src[i..end].chars().skip(1) {
                    iter.next();
                }
            }
            _ => {}
        }
    }
    out
}
