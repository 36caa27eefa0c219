//! SQL sanitisation: no parameter value leaves the node. Every literal (strings, numbers,
//! hex and bit strings, dollar-quoted bodies, `TRUE`/`FALSE`) becomes `?`, an `IN` list
//! of literals collapses to `IN (?)`, comments are dropped, runs of whitespace become one
//! space, and the text is cut at [`MAX_QUERY_TEXT`] bytes. Identifiers, keywords,
//! operators and placeholders (`$1`, `?`) are kept, so that equal statements sanitise to
//! the same text. It also names the statement's operation and, when the statement names
//! exactly one table, its collection (`db.operation.name`, `db.collection.name`).
//!
//! A small tokenizer rather than a parser: it never fails, and when unsure it hides
//! more, not less. A string left open runs to the end of the text (all of it hidden),
//! and a backslash escapes the next character in every dialect (MySQL's default; for
//! PostgreSQL, whose standard strings do not escape, that only ever hides more).
//! No SQL crate fits: parsers reject the fragments and dialect quirks seen on the wire
//! and allocate per token; the tracing libraries' obfuscators pull in their whole SDK.

/// Longest sanitised text kept, in bytes; a longer one is cut (at a character
/// boundary) and ends with `…`.
pub const MAX_QUERY_TEXT: usize = 2048;

/// How the server reads quotes and comments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `"x"` is an identifier; `$tag$…$tag$` strings; `E'…'`, `B'…'`, `U&'…'`
    /// prefixes; nested `/* */` comments.
    Postgres,
    /// `"x"` is a string (without `ANSI_QUOTES`); `` `x` `` identifiers; `#` comments.
    MySql,
}

/// What [`summarize`] finds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The statement's first keyword, upper-cased (`SELECT`, `INSERT`, …).
    pub operation: Option<String>,
    /// The one table it names (`SELECT … FROM t`, `INSERT INTO t`, `UPDATE t`,
    /// `DELETE FROM t`), as written (quotes removed); `None` for several (joins, comma
    /// lists, subqueries) or none.
    pub collection: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Word,
    /// A quoted identifier: text without its quotes.
    Ident,
    Literal,
    /// Whitespace or a comment.
    Space,
    /// Anything else: one character (operators, punctuation, placeholders).
    Punct,
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
}

struct Tokens<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    dialect: Dialect,
    /// The previous token that was not space: decides whether `-` starts a number.
    prev: Option<Kind>,
    prev_text: &'a str,
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl<'a> Tokens<'a> {
    fn new(s: &'a str, dialect: Dialect) -> Self {
        Self { s, b: s.as_bytes(), i: 0, dialect, prev: None, prev_text: "" }
    }

    fn at(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }

    /// Index just past a quoted run starting at `self.i` (on its opening quote): a
    /// doubled quote or a backslash escapes; unterminated runs to the end.
    fn quoted_end(&self, quote: u8, backslash: bool) -> usize {
        let mut j = self.i + 1;
        while j < self.b.len() {
            match self.b[j] {
                b'\\' if backslash => j += 2,
                c if c == quote => {
                    if self.b.get(j + 1) == Some(&quote) {
                        j += 2;
                    } else {
                        return j + 1;
                    }
                }
                _ => j += 1,
            }
        }
        self.b.len()
    }

    /// End of a number starting at `from` (digits, one dot, an exponent; or hex `0x…`).
    fn number_end(&self, from: usize) -> usize {
        let b = self.b;
        let mut j = from;
        if b.get(j) == Some(&b'0') && matches!(b.get(j + 1), Some(b'x' | b'X')) {
            j += 2;
            while b.get(j).is_some_and(u8::is_ascii_hexdigit) {
                j += 1;
            }
            return j;
        }
        while b.get(j).is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
            j += 1;
        }
        if matches!(b.get(j), Some(b'e' | b'E')) {
            let k = j + 1 + usize::from(matches!(b.get(j + 1), Some(b'+' | b'-')));
            if b.get(k).is_some_and(u8::is_ascii_digit) {
                j = k;
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
            }
        }
        // `1abc` is not an identifier in SQL: the rest of the word goes with it.
        while b.get(j).copied().is_some_and(is_word_byte) {
            j += 1;
        }
        j
    }

    /// `$tag$`: the end of the opening delimiter when one starts at `self.i`.
    fn dollar_tag_end(&self) -> Option<usize> {
        let b = self.b;
        let mut j = self.i + 1;
        while b.get(j).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80) {
            j += 1;
        }
        // `$1` is a placeholder, not a tag.
        let tag = &b[self.i + 1..j];
        (b.get(j) == Some(&b'$') && !tag.first().is_some_and(u8::is_ascii_digit)).then_some(j + 1)
    }

    /// Whether a `-` here is a sign: after an operator, `(`, `,` or a keyword.
    fn sign_allowed(&self) -> bool {
        match self.prev {
            // After a value (a closing bracket, a placeholder) it is an operator.
            None | Some(Kind::Punct) => !matches!(self.prev_text, ")" | "]" | "?") && !self.prev_text.starts_with('$'),
            Some(Kind::Word) => is_keyword(self.prev_text),
            Some(Kind::Literal | Kind::Ident | Kind::Space) => false,
        }
    }

    fn token(&mut self) -> Option<(Kind, usize)> {
        let b = self.b;
        let c = *b.get(self.i)?;
        let pg = self.dialect == Dialect::Postgres;
        let n = b.len();
        let end = match c {
            c if c.is_ascii_whitespace() => {
                let mut j = self.i;
                while b.get(j).is_some_and(u8::is_ascii_whitespace) {
                    j += 1;
                }
                (Kind::Space, j)
            }
            b'-' if self.at(1) == b'-' => (Kind::Space, line_end(b, self.i)),
            b'#' if !pg => (Kind::Space, line_end(b, self.i)),
            b'/' if self.at(1) == b'*' => (Kind::Space, comment_end(b, self.i, pg)),
            b'\'' => (Kind::Literal, self.quoted_end(b'\'', true)),
            b'"' if !pg => (Kind::Literal, self.quoted_end(b'"', true)),
            b'"' => (Kind::Ident, self.quoted_end(b'"', false)),
            b'`' if !pg => (Kind::Ident, self.quoted_end(b'`', false)),
            b'$' if pg => match self.dollar_tag_end() {
                Some(open) => {
                    let tag = &self.s[self.i..open];
                    let close = self.s[open..].find(tag).map_or(n, |k| open + k + tag.len());
                    (Kind::Literal, close)
                }
                None => {
                    let mut j = self.i + 1;
                    while b.get(j).is_some_and(u8::is_ascii_digit) {
                        j += 1;
                    }
                    (Kind::Punct, j.max(self.i + 1))
                }
            },
            c if c.is_ascii_digit() => (Kind::Literal, self.number_end(self.i)),
            b'.' if self.at(1).is_ascii_digit() && self.prev != Some(Kind::Word) && self.prev != Some(Kind::Ident) => {
                (Kind::Literal, self.number_end(self.i))
            }
            b'-' | b'+'
                if (self.at(1).is_ascii_digit() || (self.at(1) == b'.' && self.at(2).is_ascii_digit()))
                    && self.sign_allowed() =>
            {
                (Kind::Literal, self.number_end(self.i + 1))
            }
            c if is_word_byte(c) => {
                // String prefixes: E'…', B'…', X'…', N'…', U&'…'; MySQL's _utf8'…'.
                let mut j = self.i;
                while b.get(j).copied().is_some_and(is_word_byte) {
                    j += 1;
                }
                let word = &b[self.i..j];
                let prefixed = |w: &[u8]| {
                    matches!(w, [b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N'])
                        || (w.first() == Some(&b'_') && w.len() > 1)
                };
                if b.get(j) == Some(&b'\'') && prefixed(word) {
                    let save = self.i;
                    self.i = j;
                    let e = self.quoted_end(b'\'', true);
                    self.i = save;
                    (Kind::Literal, e)
                } else if matches!(word, [b'u' | b'U']) && b.get(j) == Some(&b'&') && b.get(j + 1) == Some(&b'\'') {
                    let save = self.i;
                    self.i = j + 1;
                    let e = self.quoted_end(b'\'', true);
                    self.i = save;
                    (Kind::Literal, e)
                } else if word.eq_ignore_ascii_case(b"true") || word.eq_ignore_ascii_case(b"false") {
                    (Kind::Literal, j)
                } else {
                    (Kind::Word, j)
                }
            }
            _ => {
                // One character (a whole UTF-8 sequence is a word byte run, never here).
                (Kind::Punct, self.i + 1)
            }
        };
        Some((end.0, end.1.min(n)))
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let (kind, end) = self.token()?;
        // Token ends are ASCII positions or the end, so always character boundaries;
        // the fallback only guards that reasoning.
        let end = (end..=self.b.len()).find(|&e| self.s.is_char_boundary(e)).unwrap_or(self.b.len());
        let mut text = self.s.get(self.i..end).unwrap_or_default();
        self.i = end.max(self.i + 1).min(self.b.len().max(self.i + 1));
        if kind == Kind::Ident {
            let quote = text.as_bytes().first().copied().map_or('\0', char::from);
            text = text.strip_prefix(quote).unwrap_or(text);
            text = text.strip_suffix(quote).unwrap_or(text);
        }
        if kind != Kind::Space {
            self.prev = Some(kind);
            self.prev_text = text;
        }
        Some(Token { kind, text })
    }
}

fn line_end(b: &[u8], from: usize) -> usize {
    b[from..].iter().position(|&c| c == b'\n').map_or(b.len(), |k| from + k + 1)
}

/// End of a `/* */` comment at `from`; PostgreSQL nests them. Unterminated: the end.
fn comment_end(b: &[u8], from: usize, nested: bool) -> usize {
    let mut depth = 0usize;
    let mut j = from;
    while j + 1 < b.len() {
        match (b[j], b[j + 1]) {
            (b'/', b'*') => {
                depth += 1;
                j += 2;
                if !nested && depth > 1 {
                    depth = 1;
                }
            }
            (b'*', b'/') => {
                depth = depth.saturating_sub(1);
                j += 2;
                if depth == 0 {
                    return j;
                }
            }
            _ => j += 1,
        }
    }
    b.len()
}

/// Words after which `-` is a sign and after which a `(` list may be a list of values.
fn is_keyword(w: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "AND", "BETWEEN", "BY", "CASE", "ELSE", "IN", "IS", "LIKE", "LIMIT", "NOT", "OFFSET", "ON", "OR", "RETURN",
        "SELECT", "SET", "THEN", "VALUES", "WHEN", "WHERE", "ILIKE", "HAVING", "INTERVAL",
    ];
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(w))
}

/// The sanitised text of `sql`.
#[must_use]
pub fn sanitize(sql: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(sql.len().min(MAX_QUERY_TEXT + 4));
    let mut space = false;
    // An `IN (` list: where its contents start in `out`, its depth, and whether it
    // has held only literals and commas so far.
    let mut in_list: Option<(usize, usize, bool)> = None;
    let mut after_in = false;
    let mut depth = 0usize;
    for t in Tokens::new(sql, dialect) {
        if t.kind == Kind::Space {
            space = true;
            continue;
        }
        if out.len() >= MAX_QUERY_TEXT {
            cut(&mut out);
            return out;
        }
        if space && !out.is_empty() && !out.ends_with('(') && t.text != ")" && t.text != "," {
            out.push(' ');
        }
        space = false;
        match (t.kind, t.text) {
            (Kind::Punct, "(") => {
                depth += 1;
                out.push('(');
                if after_in && in_list.is_none() {
                    in_list = Some((out.len(), depth, true));
                }
            }
            (Kind::Punct, ")") => {
                if let Some((start, d, only_literals)) = in_list {
                    if d == depth {
                        if only_literals && out.len() > start {
                            out.truncate(start);
                            out.push('?');
                        }
                        in_list = None;
                    }
                }
                depth = depth.saturating_sub(1);
                out.push(')');
            }
            (Kind::Literal, _) => out.push('?'),
            (Kind::Ident, text) => {
                let quote = if dialect == Dialect::MySql { '`' } else { '"' };
                out.push(quote);
                out.push_str(text);
                out.push(quote);
            }
            (_, text) => out.push_str(text),
        }
        if let Some((_, _, only)) = &mut in_list {
            if !(t.kind == Kind::Literal || t.text == "," || t.text == "(") {
                *only = false;
            }
        }
        after_in = t.kind == Kind::Word && t.text.eq_ignore_ascii_case("IN");
    }
    if out.len() > MAX_QUERY_TEXT {
        cut(&mut out);
    }
    out
}

/// A server's error message with every value it may quote hidden. Servers quote the
/// statement they failed on and the values they reject (`near 'x = 'secret'' at line 1`,
/// `Duplicate entry 'secret' for key 'email'`), and a quoted statement's own quotes
/// unbalance the pairs: so everything from the first quote to the last is one `?`
/// (an unpaired quote hides the rest), then the remainder is sanitised as SQL (numbers).
#[must_use]
pub fn sanitize_message(message: &str) -> String {
    let is_quote = |c: char| matches!(c, '\'' | '"' | '`');
    let hidden = match (message.find(is_quote), message.rfind(is_quote)) {
        (Some(first), Some(last)) if first < last => format!("{}?{}", &message[..first], &message[last + 1..]),
        (Some(first), _) => format!("{}?", &message[..first]),
        _ => message.to_owned(),
    };
    sanitize(&hidden, Dialect::MySql)
}

/// Cuts `out` to [`MAX_QUERY_TEXT`] bytes at a character boundary and marks the cut.
fn cut(out: &mut String) {
    let mut end = MAX_QUERY_TEXT.min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out.push('…');
}

/// The statement's operation and its one table, if it names exactly one.
#[must_use]
pub fn summarize(sql: &str, dialect: Dialect) -> Summary {
    let words: Vec<Token<'_>> = Tokens::new(sql, dialect).filter(|t| t.kind != Kind::Space).take(64).collect();
    let Some(first) = words.first().filter(|t| t.kind == Kind::Word) else { return Summary::default() };
    let operation = first.text.to_ascii_uppercase();
    // The token after which the table is named, for the statements that name one.
    let marker = match operation.as_str() {
        "SELECT" | "DELETE" => "FROM",
        "INSERT" | "REPLACE" => "INTO",
        "UPDATE" => "UPDATE",
        _ => return Summary { operation: Some(operation), collection: None },
    };
    let Some(at) = words.iter().position(|t| t.kind == Kind::Word && t.text.eq_ignore_ascii_case(marker)) else {
        return Summary { operation: Some(operation), collection: None };
    };
    // `schema.table` counts as one name.
    let mut name = String::new();
    let mut k = at + 1;
    while let Some(t) = words.get(k) {
        match t.kind {
            Kind::Word | Kind::Ident if name.is_empty() || name.ends_with('.') => name.push_str(t.text),
            Kind::Punct if t.text == "." && !name.is_empty() => name.push('.'),
            _ => break,
        }
        k += 1;
    }
    // Several tables (a join, a comma list, a subquery) or none: no collection.
    let several = words[at + 1..].iter().any(|t| {
        (t.kind == Kind::Word && (t.text.eq_ignore_ascii_case("JOIN") || t.text.eq_ignore_ascii_case("SELECT")))
            || (t.kind == Kind::Punct && t.text == "," && operation == "SELECT" && precedes_where(&words, at, t))
    });
    let collection = (!name.is_empty() && !name.ends_with('.') && !several && name != "(").then_some(name);
    Summary { operation: Some(operation), collection }
}

/// Whether comma token `c` (in `words`) comes between `from` and the first `WHERE`,
/// `GROUP`, `ORDER` or `LIMIT` after it: a comma list of tables.
fn precedes_where(words: &[Token<'_>], from: usize, c: &Token<'_>) -> bool {
    for t in &words[from..] {
        if std::ptr::eq(t.text, c.text) {
            return true;
        }
        if t.kind == Kind::Word && ["WHERE", "GROUP", "ORDER", "LIMIT"].iter().any(|k| k.eq_ignore_ascii_case(t.text)) {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_hide_what_they_quote_even_when_the_quotes_nest() {
        let cases = [
            (
                "You have an error in your SQL syntax; check the manual near 'amount FROM t WHERE token = 'tok-1'' at line 1",
                "You have an error in your SQL syntax; check the manual near ? at line ?",
            ),
            ("Duplicate entry 'ann@example.com' for key 'email'", "Duplicate entry ?"),
            ("syntax error at or near \"SELEC\"", "syntax error at or near ?"),
            ("value 99999999999 is out of range for type integer", "value ? is out of range for type integer"),
            ("unterminated 'secret", "unterminated ?"),
            ("Operation against a key holding the wrong kind of value", "Operation against a key holding the wrong kind of value"),
        ];
        for (message, want) in cases {
            assert_eq!(sanitize_message(message), want, "{message}");
        }
    }

    fn pg(s: &str) -> String {
        sanitize(s, Dialect::Postgres)
    }

    fn my(s: &str) -> String {
        sanitize(s, Dialect::MySql)
    }

    #[test]
    fn every_literal_becomes_a_placeholder() {
        assert_eq!(
            pg("SELECT * FROM users WHERE id = 42 AND name = 'bob'"),
            "SELECT * FROM users WHERE id = ? AND name = ?"
        );
        assert_eq!(pg("select 1.5e-3, .5, 0x1F, -7, 3 - 2"), "select ?, ?, ?, ?, ? - ?");
        assert_eq!(pg("UPDATE t SET a = TRUE, b = false WHERE c IS NULL"), "UPDATE t SET a = ?, b = ? WHERE c IS NULL");
        assert_eq!(pg("SELECT E'a\\'b', B'101', X'ff', N'x', U&'d\\0061t'"), "SELECT ?, ?, ?, ?, ?");
        assert_eq!(pg("SELECT $$secret$$, $tag$ a $ b $tag$, $1"), "SELECT ?, ?, $1");
        assert_eq!(pg("SELECT 'it''s', 'a\\'b'"), "SELECT ?, ?");
        assert_eq!(my("SELECT \"secret\", _utf8'x', `col` FROM `t`"), "SELECT ?, ?, `col` FROM `t`");
        // A sign needs a digit; after a placeholder `-` is an operator.
        assert_eq!(pg("SELECT +.x, ? -1, $1 - 2"), "SELECT +.x, ? -?, $1 - ?");
        assert_eq!(pg("+.\u{fffd}+."), "+.\u{fffd}+.");
        assert_eq!(pg("?+."), "?+.");
        // Identifiers with digits stay; a column minus a number keeps its operator.
        assert_eq!(pg("SELECT col1, t2.c3 FROM t2 WHERE c3-1 > x"), "SELECT col1, t2.c3 FROM t2 WHERE c3-? > x");
    }

    #[test]
    fn in_lists_collapse_and_subqueries_stay() {
        assert_eq!(
            pg("SELECT a FROM t WHERE id IN (1, 2, 3) AND s in ('a','b')"),
            "SELECT a FROM t WHERE id IN (?) AND s in (?)"
        );
        assert_eq!(
            pg("DELETE FROM t WHERE id IN (SELECT id FROM u WHERE x = 5)"),
            "DELETE FROM t WHERE id IN (SELECT id FROM u WHERE x = ?)"
        );
        assert_eq!(pg("SELECT 1 WHERE x IN ($1, $2)"), "SELECT ? WHERE x IN ($1, $2)");
    }

    #[test]
    fn comments_and_whitespace_go() {
        assert_eq!(
            pg("SELECT /* user=alice */ a\n\t FROM t -- password=hunter2\nWHERE b=1"),
            "SELECT a FROM t WHERE b=?"
        );
        assert_eq!(pg("SELECT /* a /* nested */ still */ 1"), "SELECT ?");
        assert_eq!(my("SELECT 1 # trailing secret\n, 2"), "SELECT ?, ?");
    }

    #[test]
    fn unterminated_quotes_hide_the_rest() {
        assert_eq!(pg("SELECT 'open string with secret"), "SELECT ?");
        assert_eq!(pg("SELECT $x$ never closed"), "SELECT ?");
        assert_eq!(pg("SELECT 1 /* open comment secret"), "SELECT ?");
    }

    #[test]
    fn long_text_is_cut_at_the_bound() {
        let sql = format!("SELECT {} FROM t", "column_name, ".repeat(500));
        let out = pg(&sql);
        assert!(out.len() <= MAX_QUERY_TEXT + '…'.len_utf8() && out.ends_with('…'), "{}", out.len());
        let multibyte = format!("SELECT ééé{}", "é".repeat(3000));
        let out = pg(&multibyte);
        assert!(out.len() <= MAX_QUERY_TEXT + 3 && out.ends_with('…'));
    }

    #[test]
    fn no_literal_survives_in_realistic_statements() {
        let secrets = ["hunter2", "4111111111111111", "alice@example.com", "s3cr3t", "987654"];
        let both = [Dialect::Postgres, Dialect::MySql];
        let statements = [
            (
                &both[..],
                "INSERT INTO accounts (email, card, pin) VALUES ('alice@example.com', 4111111111111111, 987654)",
            ),
            // A double-quoted string is MySQL's; in PostgreSQL it names a column.
            (&both[1..], "UPDATE users SET password = 'hunter2' WHERE email = \"alice@example.com\""),
            (&both[..1], "SELECT * FROM t WHERE token = $q$s3cr3t$q$ OR pin IN (987654, 1)"),
            (&both[..], "insert into t values (E'hunter2\\'s', -4111111111111111)"),
        ];
        for (dialects, s) in statements {
            for &dialect in dialects {
                let out = sanitize(s, dialect);
                for secret in secrets {
                    assert!(!out.contains(secret), "{dialect:?}: {s} -> {out}");
                }
            }
        }
    }

    #[test]
    fn operation_and_collection() {
        let s = |sql: &str| {
            let sm = summarize(sql, Dialect::Postgres);
            (sm.operation.unwrap_or_default(), sm.collection)
        };
        let one = |op: &str, t: &str| (op.to_owned(), Some(t.to_owned()));
        assert_eq!(s("select * from users where id = 1"), one("SELECT", "users"));
        assert_eq!(s("INSERT INTO public.orders (a) VALUES (1)"), one("INSERT", "public.orders"));
        assert_eq!(s("UPDATE \"Items\" SET a = 1"), one("UPDATE", "Items"));
        assert_eq!(s("DELETE FROM t WHERE a = 1"), one("DELETE", "t"));
        assert_eq!(s("SELECT * FROM a JOIN b ON a.id = b.id"), ("SELECT".to_owned(), None));
        assert_eq!(s("SELECT * FROM a, b WHERE a.x = b.y"), ("SELECT".to_owned(), None));
        assert_eq!(s("SELECT a, b FROM t WHERE c IN (1, 2)"), one("SELECT", "t"));
        assert_eq!(s("SELECT * FROM (SELECT 1) x"), ("SELECT".to_owned(), None));
        assert_eq!(s("BEGIN"), ("BEGIN".to_owned(), None));
        assert_eq!(s("  /* c */ commit"), ("COMMIT".to_owned(), None));
        assert_eq!(summarize("", Dialect::Postgres), Summary::default());
        assert_eq!(summarize("42", Dialect::MySql), Summary::default());
        assert_eq!(summarize("select 1 from `db`.`tbl`", Dialect::MySql).collection.as_deref(), Some("db.tbl"));
    }

    #[test]
    fn hostile_text_never_panics_and_stays_bounded() {
        // A deterministic xorshift over bytes the tokenizer treats specially.
        let alphabet = b"'\"`$-#/*\\.0123456789eExX+ _abc()INin,\n\xc3\xa9";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let len = (x % 300) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let s = String::from_utf8_lossy(&v);
            for d in [Dialect::Postgres, Dialect::MySql] {
                let out = sanitize(&s, d);
                assert!(out.len() <= MAX_QUERY_TEXT + 3);
                let _ = summarize(&s, d);
            }
        }
    }
}
