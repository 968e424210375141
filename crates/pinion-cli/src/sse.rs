//! Reading a Server-Sent Events stream: bytes in, messages out.

/// One message of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// An event: its `id`, `event` and `data` lines.
    Event {
        id: Option<String>,
        kind: Option<String>,
        data: String,
    },
    /// A comment line (`: …`), such as a keep-alive or the server's last
    /// words before it ends the stream.
    Comment(String),
}

/// Splits a byte stream into messages; feed it chunks as they come.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
}

/// The most a single message may take: a stream that never ends one is not
/// a stream this client reads.
const MAX_MESSAGE: usize = 1024 * 1024;

impl Parser {
    /// Adds a chunk; returns the messages it completed, or an error when a
    /// message grows past a megabyte.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Message>, String> {
        self.buffer.extend_from_slice(chunk);
        let mut messages = Vec::new();
        loop {
            let Some((end, separator)) = find_blank_line(&self.buffer) else {
                if self.buffer.len() > MAX_MESSAGE {
                    return Err("the stream sent a message larger than 1 MiB".into());
                }
                return Ok(messages);
            };
            let block: Vec<u8> = self.buffer.drain(..end + separator).collect();
            let text = String::from_utf8_lossy(&block[..end]).into_owned();
            messages.extend(parse_block(&text));
        }
    }
}

/// Where the first blank line ends a message: its start and the length of
/// the separator (`\n\n`, `\r\n\r\n`).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|pair| pair == b"\n\n");
    let crlf = buffer.windows(4).position(|quad| quad == b"\r\n\r\n");
    match (lf, crlf) {
        (Some(a), Some(b)) if b < a => Some((b, 4)),
        (Some(a), _) => Some((a, 2)),
        (None, Some(b)) => Some((b, 4)),
        (None, None) => None,
    }
}

fn parse_block(block: &str) -> Vec<Message> {
    let mut id = None;
    let mut kind = None;
    let mut data: Option<String> = None;
    let mut comments = Vec::new();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            comments.push(Message::Comment(comment.trim().to_owned()));
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => kind = Some(value.to_owned()),
            "data" => {
                let data = data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    if let Some(data) = data {
        comments.push(Message::Event { id, kind, data });
    }
    comments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_on_blank_lines_across_chunks() {
        let mut parser = Parser::default();
        assert!(
            parser
                .feed(b"retry: 3000\n\nid: 7\nevent: pin.pro")
                .unwrap()
                .is_empty()
        );
        let messages = parser
            .feed(b"moted\ndata: {\"id\":7}\n\n: keep-alive\n\n")
            .unwrap();
        assert_eq!(
            messages,
            [
                Message::Event {
                    id: Some("7".into()),
                    kind: Some("pin.promoted".into()),
                    data: "{\"id\":7}".into()
                },
                Message::Comment("keep-alive".into())
            ]
        );
        let crlf = parser.feed(b"id: 8\r\ndata: x\r\n\r\n").unwrap();
        assert_eq!(crlf.len(), 1);
    }

    #[test]
    fn an_endless_message_is_refused() {
        let mut parser = Parser::default();
        assert!(parser.feed(&vec![b'a'; MAX_MESSAGE + 1]).is_err());
    }
}
