//! Live waterfall on stdout: the default view when no OTLP endpoint or output is given.
//!
//! Spans are buffered per trace; a trace is printed once no span has arrived for it for
//! [`QUIET`], as a Gantt chart on the trace's own time axis:
//!
//! ```text
//! ── trace 4b4b4b4b · 22:13:20.000 UTC · 7 spans · 4 errors · 42.1 ms ────────────
//! ✗ nginx  GET /api/users/1 502        ██░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░██  42.1 ms
//!     nginx  → GET /auth 200           ██                                  1.15 ms
//!       auth  GET /auth 200            ██                                   850 µs
//! ✗   nginx  → GET /users/1 502         █░░░░░░░░░░░░░░░░░░░░░░░░███████   38.8 ms
//! ✗     users  GET /users/1 502         █░░░░░░░░░░░░░░░░░░░░░░██          30.0 ms
//! ✗       users  → POST /db/query 500    ██████████████████████            27.0 ms
//!   auth  GET /health 200                                               █   900 µs
//!   █ critical path · 64% (27.0 ms) in users → ? (POST /db/query)
//! ```
//!
//! Solid cells are the trace's critical path ([`super::critical`]): the time each span
//! spent on the chain that determined the trace's duration, its own work rather than
//! waiting on a child; light cells are the rest of a span. The last line names the hop
//! (a call and the server span that answered it) with the most time on that path.
//!
//! The buffer is bounded ([`MAX_TRACES`] open traces, oldest printed first when full;
//! [`MAX_SPANS_PER_TRACE`] spans per trace, extra spans dropped and counted).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::critical::{critical_path, describe_hop, dominant_hop, CriticalPath, Timing};
use super::queue::SpanQueue;
use super::OutputCounters;
use crate::span::model::hex;
use crate::span::{AttrValue, Span, SpanKind, Status};
use crate::stats::{self, Counter};

/// A trace is finished when no span has arrived for it for this long.
pub const QUIET: Duration = Duration::from_millis(1500);
/// Open traces held at most; beyond it the oldest is printed early.
pub const MAX_TRACES: usize = 1000;
/// Spans held per trace; beyond it spans are dropped (counted as `drop.export_queue_full`).
pub const MAX_SPANS_PER_TRACE: usize = 200;
/// How often finished traces are looked for.
const TICK: Duration = Duration::from_millis(250);
const DEFAULT_WIDTH: usize = 80;
const MIN_WIDTH: usize = 40;
const MAX_WIDTH: usize = 240;
/// Indentation stops growing at this depth so labels keep some room.
const MAX_INDENT_DEPTH: usize = 8;

/// A trace ready to print.
#[derive(Debug)]
pub(crate) struct Finished {
    pub spans: Vec<Arc<Span>>,
    /// Spans of this trace dropped because it hit [`MAX_SPANS_PER_TRACE`].
    pub hidden: usize,
}

struct OpenTrace {
    spans: Vec<Arc<Span>>,
    hidden: usize,
    /// Arrival order of the trace's first span.
    seq: u64,
    last_seen: Instant,
}

/// Spans grouped by trace until each trace goes quiet.
pub(crate) struct TraceBuffer {
    traces: HashMap<[u8; 16], OpenTrace>,
    max_traces: usize,
    max_spans: usize,
    next_seq: u64,
    spans: usize,
}

impl TraceBuffer {
    pub(crate) fn new(max_traces: usize, max_spans: usize) -> Self {
        Self {
            traces: HashMap::new(),
            max_traces: max_traces.max(1),
            max_spans: max_spans.max(1),
            next_seq: 0,
            spans: 0,
        }
    }

    /// Spans held.
    pub(crate) fn span_count(&self) -> usize {
        self.spans
    }

    /// Adds a span. Returns the oldest trace when a new trace does not fit.
    pub(crate) fn add(&mut self, span: Arc<Span>, now: Instant) -> Option<Finished> {
        if let Some(t) = self.traces.get_mut(&span.trace_id) {
            t.last_seen = now;
            if t.spans.len() >= self.max_spans {
                t.hidden += 1;
                stats::global().drop_event(
                    Counter::DropExportQueueFull,
                    format_args!("console: trace {} has over {} spans", hex(&span.trace_id), self.max_spans),
                );
            } else {
                t.spans.push(span);
                self.spans += 1;
            }
            return None;
        }
        let evicted = if self.traces.len() >= self.max_traces {
            let oldest = self.traces.iter().min_by_key(|(_, t)| t.seq).map(|(id, _)| *id);
            oldest.and_then(|id| self.remove(&id))
        } else {
            None
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.spans += 1;
        self.traces.insert(span.trace_id, OpenTrace { spans: vec![span], hidden: 0, seq, last_seen: now });
        evicted
    }

    fn remove(&mut self, id: &[u8; 16]) -> Option<Finished> {
        let t = self.traces.remove(id)?;
        self.spans -= t.spans.len();
        Some(Finished { spans: t.spans, hidden: t.hidden })
    }

    /// Takes the traces quiet for at least `quiet`, oldest first.
    pub(crate) fn take_finished(&mut self, now: Instant, quiet: Duration) -> Vec<Finished> {
        let mut done: Vec<([u8; 16], u64)> = self
            .traces
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.last_seen) >= quiet)
            .map(|(id, t)| (*id, t.seq))
            .collect();
        done.sort_by_key(|&(_, seq)| seq);
        done.iter().filter_map(|(id, _)| self.remove(id)).collect()
    }

    /// Takes every trace, oldest first.
    pub(crate) fn take_all(&mut self) -> Vec<Finished> {
        self.take_finished(Instant::now(), Duration::ZERO)
    }
}

/// Where the waterfall is written.
pub(crate) type Sink = Arc<Mutex<dyn std::io::Write + Send>>;

/// The console task: buffers spans, prints finished traces to stdout (in color when it
/// is a terminal), prints the rest at shutdown.
pub(crate) async fn run(queue: Arc<SpanQueue>, counters: Arc<OutputCounters>, batch_size: usize) {
    let color = std::io::stdout().is_terminal();
    let sink: Sink = Arc::new(Mutex::new(std::io::stdout()));
    run_to(queue, counters, batch_size, sink, None, color).await;
}

pub(crate) async fn run_to(
    queue: Arc<SpanQueue>,
    counters: Arc<OutputCounters>,
    batch_size: usize,
    sink: Sink,
    // `None`: follow the terminal (looked up for every print, so resizes apply).
    width: Option<usize>,
    color: bool,
) {
    let mut buf = TraceBuffer::new(MAX_TRACES, MAX_SPANS_PER_TRACE);
    loop {
        let batch = queue.next_batch(batch_size, TICK).await;
        let now = Instant::now();
        let mut ready = Vec::new();
        let closing = match batch {
            Some(batch) => {
                for span in batch {
                    ready.extend(buf.add(span, now));
                }
                ready.extend(buf.take_finished(now, QUIET));
                false
            }
            None => {
                ready.extend(buf.take_all());
                true
            }
        };
        queue.set_in_flight(buf.span_count());
        let width = match width {
            Some(w) => w,
            None if ready.is_empty() => DEFAULT_WIDTH,
            None => terminal_width(),
        };
        print(ready, width, color, &sink, &counters).await;
        if closing {
            break;
        }
    }
    queue.set_in_flight(0);
}

async fn print(traces: Vec<Finished>, width: usize, color: bool, sink: &Sink, counters: &OutputCounters) {
    if traces.is_empty() {
        return;
    }
    let mut text = String::new();
    let mut n = 0;
    for t in &traces {
        text.push_str(&render(&t.spans, width, t.hidden, color));
        text.push('\n');
        n += t.spans.len();
    }
    let sink = sink.clone();
    // Writing to a terminal or pipe may block: keep it off the runtime's workers.
    let written = tokio::task::spawn_blocking(move || {
        let mut out = sink.lock().unwrap_or_else(PoisonError::into_inner);
        out.write_all(text.as_bytes()).and_then(|()| out.flush())
    })
    .await;
    match written {
        Ok(Ok(())) => counters.exported(n),
        Ok(Err(e)) => {
            counters.error();
            counters.failed("console", n, format_args!("stdout: {e}"));
        }
        Err(e) => {
            counters.error();
            counters.failed("console", n, format_args!("stdout writer: {e}"));
        }
    }
}

/// Width to render at: `COLUMNS` when set, else the terminal's width when stdout is one,
/// else 80; clamped to 40..=240.
fn terminal_width() -> usize {
    let from_env = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok());
    from_env.or_else(tty_columns).map_or(DEFAULT_WIDTH, |w| w.clamp(MIN_WIDTH, MAX_WIDTH))
}

fn tty_columns() -> Option<usize> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which is valid and
    // exclusively borrowed for the call; on a non-terminal the call fails with ENOTTY.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, std::ptr::from_mut(&mut ws)) };
    (rc == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

// ---- rendering ---------------------------------------------------------------------

/// Renders one trace as a plain-text Gantt chart, every line at most `width` (≥ 40)
/// columns: a header, then one row per span in tree order.
#[must_use]
pub fn render_trace(spans: &[Arc<Span>], width: usize) -> String {
    render(spans, width, 0, false)
}

/// Human duration: `850 ns`, `12.3 µs`, `1.24 ms`, `312 ms`, `2.50 s`.
#[must_use]
pub fn fmt_duration(ns: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "µs")];
    for (scale, unit) in UNITS {
        if ns >= scale {
            let v = ns as f64 / scale as f64;
            return if v >= 100.0 {
                format!("{v:.0} {unit}")
            } else if v >= 10.0 {
                format!("{v:.1} {unit}")
            } else {
                format!("{v:.2} {unit}")
            };
        }
    }
    format!("{ns} ns")
}

/// Wall-clock time of day (UTC) of a Unix-nanosecond timestamp.
fn fmt_time_of_day(unix_ns: u64) -> String {
    let ms = unix_ns / 1_000_000;
    let day_ms = ms % 86_400_000;
    let (h, m, s, milli) = (day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60, day_ms % 1000);
    format!("{h:02}:{m:02}:{s:02}.{milli:03} UTC")
}

/// Replaces control characters (captured traffic must not drive the terminal).
pub(crate) fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// `s` cut to at most `cols` characters, with `…` when cut.
fn truncate(s: &str, cols: usize) -> String {
    if s.chars().count() <= cols {
        return s.to_owned();
    }
    if cols == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(cols - 1).collect();
    out.push('…');
    out
}

/// `s` padded with spaces (or cut) to exactly `cols` characters.
fn pad(s: &str, cols: usize) -> String {
    let mut out = truncate(s, cols);
    let n = out.chars().count();
    out.extend(std::iter::repeat_n(' ', cols - n));
    out
}

/// Span name plus the URL path (`url.path`, or the path of a client's `url.full`)
/// unless the name already has it, and the response status code (HTTP, or gRPC's status
/// name) when known.
fn operation(span: &Span) -> (String, Option<String>) {
    // A call out reads "→ GET /x", so a proxy's two rows can be told apart.
    let mut op = match span.kind {
        SpanKind::Client => format!("→ {}", span.name),
        SpanKind::Server => span.name.to_string(),
    };
    let path = match (span.attr("url.path"), span.attr("url.full")) {
        (Some(AttrValue::Str(path)), _) => Some(path.as_str()),
        (None, Some(AttrValue::Str(full))) => full_url_path(full),
        _ => None,
    };
    if let Some(path) = path {
        if !path.is_empty() && !op.contains(path) {
            op.push(' ');
            op.push_str(path);
        }
    }
    // gRPC's status is a name (`OK`, `NOT_FOUND`).
    let code = match span.attr("http.response.status_code").or_else(|| span.attr("rpc.response.status_code")) {
        Some(AttrValue::Int(code)) => Some(code.to_string()),
        Some(AttrValue::Str(code)) => Some(sanitize(code)),
        _ => None,
    };
    (sanitize(&op), code)
}

/// The path (with query) of an absolute URL: `http://h:1/a?b` → `/a?b`.
fn full_url_path(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map(|i| &rest[i..])
}

/// `indent service  operation status`, exactly `cols` wide; a long operation is cut
/// before the status code is.
fn label(span: &Span, depth: usize, cols: usize) -> String {
    let head = format!("{}{}  ", "  ".repeat(depth.min(MAX_INDENT_DEPTH)), sanitize(&span.resource.service_name));
    let (op, code) = operation(span);
    let tail = code.map(|c| format!(" {c}")).unwrap_or_default();
    let room = cols.saturating_sub(head.chars().count() + tail.chars().count());
    let text = if room >= 6 { format!("{head}{}{tail}", truncate(&op, room)) } else { format!("{head}{op}{tail}") };
    pad(&text, cols)
}

/// Spans in display order with their depth: roots (parent absent from the trace) by
/// start time, each followed by its subtree. Spans on a parent cycle come last as roots.
fn tree_order(spans: &[Arc<Span>]) -> Vec<(usize, usize)> {
    let mut by_id: HashMap<[u8; 8], usize> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        by_id.entry(s.span_id).or_insert(i);
    }
    let key = |i: &usize| (spans[*i].start_unix_ns, spans[*i].span_id, *i);
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match by_id.get(&s.parent_span_id) {
            Some(&p) if !s.is_root() && p != i => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    roots.sort_by_key(key);
    for list in children.values_mut() {
        list.sort_by_key(key);
    }
    let mut order = Vec::with_capacity(spans.len());
    let mut seen = HashSet::new();
    let mut visit = |start: usize, order: &mut Vec<(usize, usize)>| {
        let mut stack = vec![(start, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            order.push((i, depth));
            if let Some(kids) = children.get(&i) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
        }
    };
    for &r in &roots {
        visit(r, &mut order);
    }
    if order.len() < spans.len() {
        let mut rest: Vec<usize> = (0..spans.len()).collect();
        rest.sort_by_key(key);
        for i in rest {
            visit(i, &mut order);
        }
    }
    order
}

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on && !s.is_empty() {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
}

fn render(spans: &[Arc<Span>], width: usize, hidden: usize, color: bool) -> String {
    let width = width.max(MIN_WIDTH);
    let paint = Paint { on: color };
    let mut out = String::new();
    let Some(t0) = spans.iter().map(|s| s.start_unix_ns).min() else {
        return out;
    };
    let t1 = spans.iter().map(|s| s.end_unix_ns.max(s.start_unix_ns)).max().unwrap_or(t0);
    let total = (t1 - t0).max(1);
    let errors = spans.iter().filter(|s| matches!(s.status, Status::Error { .. })).count();

    // Header.
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut head = format!(
        "── trace {} · {} · {}",
        &hex(&spans[0].trace_id)[..8],
        fmt_time_of_day(t0),
        plural(spans.len(), "span")
    );
    if errors > 0 {
        let _ = write!(head, " · {}", plural(errors, "error"));
    }
    if hidden > 0 {
        let _ = write!(head, " (+{hidden} not shown)");
    }
    let _ = write!(head, " · {}", fmt_duration(t1 - t0));
    let head = if head.chars().count() + 2 <= width {
        let fill = width - head.chars().count() - 1;
        format!("{head} {}", "─".repeat(fill))
    } else {
        truncate(&head, width)
    };
    out.push_str(&paint.wrap("1", &head));
    out.push('\n');

    let timings: Vec<Timing> = spans.iter().map(|s| Timing::of(s)).collect();
    let cp = critical_path(&timings);

    // Columns: marker, label, bar, duration.
    let dur_w = 8;
    let label_w = (width * 9 / 20).max(20);
    let bar_w = width - label_w - dur_w - 2;
    for (i, depth) in tree_order(spans) {
        let s = &spans[i];
        let is_err = matches!(s.status, Status::Error { .. });
        let text = label(s, depth, label_w - 2);

        let start = s.start_unix_ns.saturating_sub(t0);
        let end = s.end_unix_ns.max(s.start_unix_ns) - t0;
        let scale = |t: u64| (u128::from(t) * bar_w as u128 / u128::from(total)) as usize;
        let from = scale(start).min(bar_w - 1);
        let to = ((u128::from(end) * bar_w as u128).div_ceil(u128::from(total)) as usize).clamp(from + 1, bar_w);
        let bar_color = match (is_err, s.kind) {
            (true, _) => "31",
            (false, SpanKind::Server) => "32",
            (false, SpanKind::Client) => "36",
        };
        let sections = cp.as_ref().map_or(&[][..], |cp| cp.sections[i].as_slice());
        let on_path = on_path_cells((s.start_unix_ns, end + t0), sections, t0, total, (from, to), bar_w);
        let mut bar = " ".repeat(from);
        // Runs of cells on and off the path, each painted once.
        let mut k = 0;
        while k < on_path.len() {
            let on = on_path[k];
            let run = on_path[k..].iter().take_while(|&&c| c == on).count();
            let (glyph, code) = if on { ("█", bar_color.to_owned()) } else { ("░", format!("2;{bar_color}")) };
            bar.push_str(&paint.wrap(&code, &glyph.repeat(run)));
            k += run;
        }
        bar.push_str(&" ".repeat(bar_w - to));
        let marker = if is_err { paint.wrap("1;31", "✗") } else { " ".to_owned() };
        let dur = truncate(&fmt_duration(s.duration_ns()), dur_w);
        let dur = paint.wrap("2", &format!("{dur:>dur_w$}"));
        let _ = writeln!(out, "{marker} {text} {bar} {dur}");
    }
    if let Some(line) = cp.as_ref().and_then(|cp| dominated_by(spans, cp)) {
        out.push_str(&paint.wrap("2", &truncate(&line, width)));
        out.push('\n');
    }
    out
}

/// Which of a bar's cells `from..to` to draw as on the critical path: those where the
/// span spent at least as much of its time on the path as off it, and the cell holding
/// each section's middle (so that a short section still shows).
fn on_path_cells(
    span: (u64, u64),
    sections: &[(u64, u64)],
    t0: u64,
    total: u64,
    (from, to): (usize, usize),
    bar_w: usize,
) -> Vec<bool> {
    let mut cells = vec![false; to - from];
    if sections.is_empty() {
        return cells;
    }
    let rel = |t: u64| u128::from(t.saturating_sub(t0));
    let at = |c: usize| u128::from(total) * c as u128 / bar_w as u128;
    let overlap = |(s, e): (u128, u128), (cs, ce): (u128, u128)| e.min(ce).saturating_sub(s.max(cs));
    let span = (rel(span.0), rel(span.1));
    for (k, cell) in cells.iter_mut().enumerate() {
        let c = (at(from + k), at(from + k + 1));
        let on: u128 = sections.iter().map(|&(s, e)| overlap((rel(s), rel(e)), c)).sum();
        *cell = on > 0 && 2 * on >= overlap(span, c);
    }
    for &(s, e) in sections {
        if e > s {
            let mid = (rel(s) + rel(e)) / 2;
            let c = ((mid * bar_w as u128 / u128::from(total)) as usize).clamp(from, to - 1);
            cells[c - from] = true;
        }
    }
    cells
}

/// `█ critical path · 88% (92.1 ms) in cart → inventory (GET /stock)`: the hop that
/// dominated the trace (the most time on the path); `None` for a single span.
fn dominated_by(spans: &[Arc<Span>], cp: &CriticalPath) -> Option<String> {
    if spans.len() < 2 || cp.total_ns == 0 {
        return None;
    }
    let hop = dominant_hop(spans, cp)?;
    let what = describe_hop(spans, &hop);
    if what.is_empty() {
        return None;
    }
    let share = u128::from(hop.ns) * 100 / u128::from(cp.total_ns);
    Some(format!("  █ critical path · {share}% ({}) in {}", fmt_duration(hop.ns), sanitize(&what)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_spans_show_the_path_of_their_url() {
        assert_eq!(full_url_path("http://127.0.0.1:8080/api/x?y=1"), Some("/api/x?y=1"));
        assert_eq!(full_url_path("http://host"), None);
    }
    use crate::export::tests::{mk_span, resource};
    use std::borrow::Cow;

    fn with(span: Arc<Span>, path: &str, code: i64, error: bool) -> Arc<Span> {
        let mut s = (*span).clone();
        s.attributes = vec![
            (Cow::Borrowed("url.path"), path.into()),
            (Cow::Borrowed("http.response.status_code"), AttrValue::Int(code)),
        ];
        if error {
            s.status = Status::Error { message: format!("HTTP {code}") };
        }
        Arc::new(s)
    }

    /// nginx → (client) → users → (client) → postgres-proxy, plus a sibling call to auth
    /// and a span whose parent was never seen.
    fn sample() -> Vec<Arc<Span>> {
        let nginx = resource(100, "nginx");
        let users = resource(200, "users");
        let auth = resource(300, "auth");
        let t = 0x4b;
        // Deliberately out of order: rendering sorts.
        vec![
            with(mk_span(&users, t, 4, 3, SpanKind::Server, "GET", 2_100, 30_000), "/users/1", 502, true),
            with(mk_span(&nginx, t, 1, 0, SpanKind::Server, "GET", 0, 42_100), "/api/users/1", 502, true),
            with(mk_span(&nginx, t, 2, 1, SpanKind::Client, "GET", 300, 1_150), "/auth", 200, false),
            with(mk_span(&nginx, t, 3, 1, SpanKind::Client, "GET", 1_800, 38_800), "/users/1", 502, true),
            with(mk_span(&users, t, 5, 4, SpanKind::Client, "POST", 2_500, 27_000), "/db/query", 500, true),
            with(mk_span(&auth, t, 6, 2, SpanKind::Server, "GET", 400, 850), "/auth", 200, false),
            with(mk_span(&auth, t, 7, 9, SpanKind::Server, "GET /health", 41_000, 900), "/health", 200, false),
        ]
    }

    #[test]
    fn snapshot_waterfall() {
        let out = render_trace(&sample(), 80);
        for line in out.lines() {
            assert!(line.chars().count() <= 80, "too wide ({}): {line}", line.chars().count());
            assert_eq!(line, line.trim_end(), "no trailing spaces");
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn the_critical_path_is_drawn_solid_and_its_dominant_hop_named() {
        let gw = resource(1, "gateway");
        let (fast, slow) = (resource(2, "auth"), resource(3, "inventory"));
        let t = 0x11;
        // Two calls in parallel: the slow one determines the trace's duration.
        let spans = vec![
            with(mk_span(&gw, t, 1, 0, SpanKind::Server, "GET", 0, 100_000), "/checkout", 200, false),
            with(mk_span(&gw, t, 2, 1, SpanKind::Client, "GET", 10_000, 30_000), "/verify", 200, false),
            with(mk_span(&fast, t, 3, 2, SpanKind::Server, "GET", 11_000, 28_000), "/verify", 200, false),
            with(mk_span(&gw, t, 4, 1, SpanKind::Client, "GET", 10_000, 80_000), "/stock", 200, false),
            with(mk_span(&slow, t, 5, 4, SpanKind::Server, "GET", 12_000, 75_000), "/stock", 200, false),
        ];
        let out = render(&spans, 100, 0, false);
        let row = |needle: &str| out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {out}"));
        // Off the path: every cell light.
        for off in ["auth  GET /verify", "→ GET /verify"] {
            assert!(!row(off).contains('█') && row(off).contains('░'), "{out}");
        }
        // On it: inventory's whole span is its own time, the gateway's mostly waits.
        assert!(row("inventory  GET /stock").contains('█') && !row("inventory  GET /stock").contains('░'), "{out}");
        let root = row("gateway  GET /checkout");
        assert!(root.contains('█') && root.matches('░').count() > root.matches('█').count(), "{out}");
        let last = out.lines().last().unwrap_or_default();
        assert_eq!(last, "  █ critical path · 80% (80.0 ms) in gateway → inventory (GET /stock)", "{out}");
        // A single span has no hop to name.
        assert_eq!(render(&spans[..1], 100, 0, false).lines().count(), 2);
    }

    #[test]
    fn lines_fit_any_width() {
        let mut spans = sample();
        let r = resource(1, &"very-long-service-name-".repeat(5));
        let mut deep = (*mk_span(&r, 0x4b, 50, 5, SpanKind::Client, "GET", 3_000, 1)).clone();
        deep.attributes = vec![(Cow::Borrowed("url.path"), "/x".repeat(100).into())];
        spans.push(Arc::new(deep));
        for width in [40, 60, 80, 81, 120, 200] {
            let out = render(&spans, width, 3, false);
            // The header, a row per span, the critical path's line.
            assert_eq!(out.lines().count(), spans.len() + 2);
            for line in out.lines() {
                assert!(line.chars().count() <= width, "width {width}: {line}");
            }
            let header = out.lines().next().unwrap();
            assert_eq!(header.chars().count(), width, "header fills the width");
        }
    }

    #[test]
    fn tree_order_puts_children_under_parents() {
        let spans = sample();
        let order: Vec<(u8, usize)> = tree_order(&spans).into_iter().map(|(i, d)| (spans[i].span_id[0], d)).collect();
        assert_eq!(order, [(1, 0), (2, 1), (6, 2), (3, 1), (4, 2), (5, 3), (7, 0)]);
    }

    #[test]
    fn tree_order_survives_cycles_and_duplicates() {
        let r = resource(1, "x");
        let spans = vec![
            mk_span(&r, 1, 1, 2, SpanKind::Server, "a", 0, 10),
            mk_span(&r, 1, 2, 1, SpanKind::Server, "b", 1, 10),
            mk_span(&r, 1, 3, 3, SpanKind::Server, "self", 2, 10),
            mk_span(&r, 1, 3, 0, SpanKind::Server, "dup", 3, 10),
        ];
        let order = tree_order(&spans);
        assert_eq!(order.len(), 4);
        let mut idx: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
        idx.sort_unstable();
        assert_eq!(idx, [0, 1, 2, 3]);
        assert!(!render_trace(&spans, 80).is_empty());
    }

    #[test]
    fn long_operations_keep_the_status_code() {
        let r = resource(1, "svc");
        let s = with(mk_span(&r, 1, 1, 0, SpanKind::Server, "GET", 0, 10), &"/segment".repeat(20), 503, true);
        let row = render_trace(&[s], 80).lines().nth(1).unwrap().to_owned();
        assert!(row.contains("svc  GET /segment") && row.contains("… 503"), "{row}");
    }

    #[test]
    fn control_characters_are_neutralized() {
        let r = resource(1, "evil\x1b[2J");
        let s = with(mk_span(&r, 1, 1, 0, SpanKind::Server, "GET", 0, 10), "/\x1b]0;pwned\x07", 200, false);
        let out = render_trace(&[s], 80);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
    }

    #[test]
    fn colors_only_when_asked() {
        let plain = render(&sample(), 80, 0, false);
        assert!(!plain.contains('\x1b'));
        let colored = render(&sample(), 80, 0, true);
        assert!(colored.contains("\x1b[31m"));
        // Same text once escapes are removed.
        let stripped = strip_ansi(&colored);
        assert_eq!(stripped, plain);
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(0), "0 ns");
        assert_eq!(fmt_duration(850), "850 ns");
        assert_eq!(fmt_duration(12_345), "12.3 µs");
        assert_eq!(fmt_duration(1_240_000), "1.24 ms");
        assert_eq!(fmt_duration(312_400_000), "312 ms");
        assert_eq!(fmt_duration(2_500_000_000), "2.50 s");
        assert_eq!(fmt_duration(98_765_000_000_000), "98765 s");
    }

    #[test]
    fn empty_trace_renders_nothing() {
        assert_eq!(render_trace(&[], 80), "");
    }

    #[test]
    fn buffer_groups_and_finishes_quiet_traces() {
        let r = resource(1, "x");
        let mut b = TraceBuffer::new(10, 10);
        let t = Instant::now();
        assert!(b.add(mk_span(&r, 1, 1, 0, SpanKind::Server, "a", 0, 1), t).is_none());
        assert!(b.add(mk_span(&r, 2, 2, 0, SpanKind::Server, "b", 0, 1), t).is_none());
        assert!(b.add(mk_span(&r, 1, 3, 1, SpanKind::Client, "c", 0, 1), t + Duration::from_secs(1)).is_none());
        assert_eq!(b.span_count(), 3);
        // Trace 2 is quiet at t+1.5s; trace 1 saw a span at t+1s.
        let done = b.take_finished(t + QUIET, QUIET);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].spans[0].trace_id, [2; 16]);
        let done = b.take_finished(t + Duration::from_secs(1) + QUIET, QUIET);
        assert_eq!(done[0].spans.len(), 2);
        assert_eq!(b.span_count(), 0);
    }

    #[test]
    fn buffer_is_bounded() {
        let r = resource(1, "x");
        let mut b = TraceBuffer::new(2, 3);
        let t = Instant::now();
        b.add(mk_span(&r, 1, 1, 0, SpanKind::Server, "a", 0, 1), t);
        b.add(mk_span(&r, 2, 1, 0, SpanKind::Server, "a", 0, 1), t);
        // A third trace evicts the oldest one.
        let evicted = b.add(mk_span(&r, 3, 1, 0, SpanKind::Server, "a", 0, 1), t).unwrap();
        assert_eq!(evicted.spans[0].trace_id, [1; 16]);
        // Spans beyond the per-trace bound are dropped and counted.
        let before = stats::global().get(Counter::DropExportQueueFull);
        for i in 2..6 {
            assert!(b.add(mk_span(&r, 3, i, 1, SpanKind::Client, "c", 0, 1), t).is_none());
        }
        assert!(stats::global().get(Counter::DropExportQueueFull) >= before + 2);
        let all = b.take_all();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].spans[0].trace_id, all[1].spans.len(), all[1].hidden), ([2; 16], 3, 2));
        assert_eq!(b.span_count(), 0);
    }

    fn capture() -> (Arc<Mutex<Vec<u8>>>, Sink) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink: Sink = buf.clone();
        (buf, sink)
    }

    fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
        String::from_utf8(buf.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test]
    async fn task_prints_everything_at_shutdown() {
        let queue = Arc::new(SpanQueue::new("console", 100));
        let counters = Arc::new(OutputCounters::default());
        let (buf, sink) = capture();
        let task = tokio::spawn(run_to(queue.clone(), counters.clone(), 512, sink, Some(80), false));
        for s in sample() {
            queue.push(s);
        }
        queue.close(Instant::now() + Duration::from_secs(1));
        task.await.unwrap();
        assert_eq!(counters.get(), (7, 0, 0));
        assert_eq!(text(&buf), format!("{}\n", render_trace(&sample(), 80)));
    }

    #[tokio::test(start_paused = true)]
    async fn task_prints_a_trace_once_it_goes_quiet() {
        let queue = Arc::new(SpanQueue::new("console", 100));
        let counters = Arc::new(OutputCounters::default());
        let (buf, sink) = capture();
        let task = tokio::spawn(run_to(queue.clone(), counters.clone(), 512, sink, Some(80), false));
        let spans = sample();
        queue.push(spans[0].clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        queue.push(spans[1].clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(text(&buf).is_empty(), "trace still receiving spans");
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The write happens on the blocking pool, in real time.
        for _ in 0..500 {
            if !text(&buf).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            tokio::task::yield_now().await;
        }
        let out = text(&buf);
        assert!(out.starts_with("── trace 4b4b4b4b") && out.contains("2 spans"), "{out}");
        queue.close(Instant::now() + Duration::from_secs(1));
        task.await.unwrap();
        assert_eq!(counters.get().0, 2);
    }
}
