//! The stdio transport: LSP's base protocol (header lines, a blank line,
//! then a JSON-RPC body of `Content-Length` bytes) read with limits, so that
//! a client that sends nonsense gets a clear error instead of a server that
//! allocates whatever length a header claims, and a body that is not
//! JSON-RPC is skipped (its framing was sound) rather than ending the
//! session.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use lsp_server::{Connection, Message};

/// The longest header line read, in bytes.
pub const MAX_HEADER: usize = 8 << 10;
/// The largest body read, in bytes: far above any document an editor sends.
pub const MAX_BODY: usize = 64 << 20;

/// The transport's threads, once the connection is in use.
#[derive(Debug)]
pub struct Io {
    /// Why the reader stopped, when it stopped on bad input.
    failed: Arc<Mutex<Option<String>>>,
    writer: JoinHandle<io::Result<()>>,
}

impl Io {
    /// Waits for every answer to be written (the connection and its
    /// senders dropped first); the reader's error, if it failed. The reader
    /// is not waited for: it may be blocked on input that never comes.
    pub fn finish(self) -> Result<(), String> {
        let written = self.writer.join().map_err(|_| "the writer panicked".to_string())?;
        let failed = match self.failed.lock() {
            Ok(mut f) => f.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(why) = failed {
            return Err(format!("bad input from the client: {why}"));
        }
        written.map_err(|e| format!("cannot write to the client: {e}"))
    }
}

/// A connection over this process's stdin and stdout.
pub fn stdio() -> (Connection, Io) {
    connect(BufReader::new(io::stdin()), io::stdout())
}

/// A connection that reads messages from `input` and writes answers to
/// `output`, each on a thread of its own.
pub fn connect<R, W>(mut input: R, mut output: W) -> (Connection, Io)
where
    R: BufRead + Send + 'static,
    W: Write + Send + 'static,
{
    let (to_server, from_client) = crossbeam_channel::bounded::<Message>(0);
    let (to_client, from_server) = crossbeam_channel::bounded::<Message>(0);
    let failed = Arc::new(Mutex::new(None));
    let slot = failed.clone();
    // The reader's channel closes when it returns: the server sees the
    // client gone.
    thread::spawn(move || {
        if let Err(why) = forward(&mut input, &to_server) {
            if let Ok(mut s) = slot.lock() {
                *s = Some(why);
            }
        }
    });
    let writer = thread::spawn(move || {
        for m in from_server {
            m.write(&mut output)?;
        }
        output.flush()
    });
    (Connection { sender: to_client, receiver: from_client }, Io { failed, writer })
}

/// Reads messages and passes them on until the input ends, the client
/// says `exit`, or the server has gone.
fn forward(input: &mut dyn BufRead, to_server: &crossbeam_channel::Sender<Message>) -> Result<(), String> {
    while let Some(body) = read_body(input)? {
        let message = match serde_json::from_slice::<Message>(&body) {
            Ok(m) => m,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "blkc lsp: skipped a message that is not JSON-RPC ({e})");
                continue;
            }
        };
        let exit = matches!(&message, Message::Notification(n) if n.method == "exit");
        if to_server.send(message).is_err() || exit {
            break;
        }
    }
    Ok(())
}

/// The next message's body; `None` at the end of the input between
/// messages.
pub fn read_body(input: &mut dyn BufRead) -> Result<Option<Vec<u8>>, String> {
    let mut length = None;
    let mut first = true;
    loop {
        let mut line = Vec::new();
        let n = (&mut *input)
            .take(MAX_HEADER as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read from the client: {e}"))?;
        if n == 0 {
            return if first { Ok(None) } else { Err("the input ended inside a message's header".into()) };
        }
        first = false;
        if !line.ends_with(b"\n") {
            return Err(if line.len() > MAX_HEADER {
                format!("a header line is longer than {} KiB", MAX_HEADER >> 10)
            } else {
                "the input ended inside a message's header".into()
            });
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("malformed header line {line:?} (expected `Name: value`)"));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let value = value.trim();
            let n: usize = value.parse().map_err(|_| format!("Content-Length {value:?} is not a number of bytes"))?;
            if n > MAX_BODY {
                return Err(format!("Content-Length {n} is over the limit of {} MiB", MAX_BODY >> 20));
            }
            length = Some(n);
        }
    }
    let Some(length) = length else { return Err("a message without a Content-Length header".into()) };
    let mut body = vec![0; length];
    input.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("the input ended inside a message's body of {length} bytes"),
        _ => format!("cannot read from the client: {e}"),
    })?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn framed(body: &str) -> String {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    }

    fn bodies(input: &str) -> (Vec<String>, Option<String>) {
        let mut r = Cursor::new(input.as_bytes().to_vec());
        let mut got = Vec::new();
        loop {
            match read_body(&mut r) {
                Ok(Some(b)) => got.push(String::from_utf8_lossy(&b).into_owned()),
                Ok(None) => return (got, None),
                Err(e) => return (got, Some(e)),
            }
        }
    }

    #[test]
    fn messages_are_framed_by_their_length() {
        let input = format!("{}Content-Type: application/vscode-jsonrpc\r\n{}", framed("{}"), framed("[1, 2]"));
        assert_eq!(bodies(&input), (vec!["{}".to_string(), "[1, 2]".to_string()], None));
        // A bare newline and any case of the header's name are read too.
        assert_eq!(bodies("content-length:2\n\n{}"), (vec!["{}".to_string()], None));
        assert_eq!(bodies(""), (vec![], None));
    }

    #[test]
    fn bad_framing_is_an_error_that_says_what_is_wrong() {
        let cases = [
            ("Content-Length: 99999999999999\r\n\r\n{}", "over the limit of 64 MiB"),
            ("Content-Length: abc\r\n\r\n{}", "\"abc\" is not a number"),
            ("Content-Length: -1\r\n\r\n{}", "\"-1\" is not a number"),
            ("garbage\n\n", "malformed header line \"garbage\""),
            ("Content-Type: x\r\n\r\n{}", "without a Content-Length"),
            ("Content-Length: 10\r\n\r\n{}", "ended inside a message's body of 10 bytes"),
            ("Content-Length: 10", "ended inside a message's header"),
        ];
        for (input, says) in cases {
            let (got, e) = bodies(input);
            assert!(got.is_empty(), "{input:?}");
            let e = e.unwrap_or_default();
            assert!(e.contains(says), "{input:?}: {e}");
        }
        // A header line without an end is read no further than the limit.
        let long = "X".repeat(10 * MAX_HEADER);
        assert!(bodies(&long).1.unwrap_or_default().contains("longer than 8 KiB"));
    }

    #[test]
    fn a_body_that_is_not_json_rpc_is_skipped_and_bad_framing_ends_the_session() {
        let exit = r#"{"jsonrpc":"2.0","method":"exit"}"#;
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let input = format!("{}{}{}", framed("{not json"), framed(ping), framed(exit));
        let (conn, io) = connect(Cursor::new(input.into_bytes()), Vec::new());
        let got: Vec<Message> = conn.receiver.iter().collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(&got[0], Message::Request(r) if r.method == "ping"), "{got:?}");
        drop(conn);
        assert_eq!(io.finish(), Ok(()));

        let input = format!("{}Content-Length: 4000000000\r\n\r\n", framed(ping));
        let (conn, io) = connect(Cursor::new(input.into_bytes()), Vec::new());
        assert_eq!(conn.receiver.iter().count(), 1);
        drop(conn);
        assert!(io.finish().is_err_and(|e| e.contains("over the limit")));
    }
}
