//! Database calls: real PostgreSQL 15, MariaDB and Redis servers on loopback (started
//! once, shared by the tests of this file), a legacy Python HTTP service that queries all
//! three with plain drivers (psycopg 3, psycopg2, PyMySQL, redis-py), and the agent's
//! JSONL output checked span by span.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ghostwire_tests::*;

/// The servers, started at the first test that needs them and stopped at exit.
struct Databases {
    dir: PathBuf,
    pg_port: u16,
    my_port: u16,
    redis_port: u16,
    pg_data: PathBuf,
    procs: Vec<Proc>,
}

static DATABASES: OnceLock<Mutex<Option<Databases>>> = OnceLock::new();

extern "C" fn stop_databases() {
    let Some(m) = DATABASES.get() else { return };
    let Ok(mut g) = m.lock() else { return };
    if let Some(db) = g.take() {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D"])
            .arg(&db.pg_data)
            .args(["-m", "fast", "-w", "stop"])
            .status();
        drop(db.procs);
        let _ = std::fs::remove_dir_all(&db.dir);
    }
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ports of the running servers: (PostgreSQL, MariaDB, Redis).
fn databases() -> (u16, u16, u16) {
    let m = DATABASES.get_or_init(|| Mutex::new(None));
    let mut g = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(db) = g.as_ref() {
        return (db.pg_port, db.my_port, db.redis_port);
    }
    require_root();
    let dir = std::env::temp_dir().join(format!("ghostwire-db-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the database dir");
    // SAFETY: registers a plain function to run at exit.
    unsafe { libc::atexit(stop_databases) };
    let [pg_port, my_port, redis_port] = free_ports();

    // PostgreSQL: initdb and pg_ctl as user postgres, in a directory it owns.
    let pg_dir = dir.join("pg");
    std::fs::create_dir_all(&pg_dir).expect("create the PostgreSQL dir");
    run("chown", Command::new("chown").arg("postgres").arg(&pg_dir).arg(&dir));
    let pg_data = pg_dir.join("data");
    run(
        "initdb",
        Command::new("runuser")
            .args(["-u", "postgres", "--", "initdb", "--auth=trust", "-U", "postgres", "-D"])
            .arg(&pg_data),
    );
    let options = format!("-p {pg_port} -k {} -c listen_addresses=127.0.0.1", pg_dir.display());
    run(
        "pg_ctl start",
        Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-w", "-D"])
            .arg(&pg_data)
            .arg("-l")
            .arg(pg_dir.join("log"))
            .args(["-o", &options, "start"]),
    );
    let mut procs = Vec::new();

    // MariaDB: its own data directory, root without a password, TCP on loopback only.
    let my_data = dir.join("mariadb");
    run(
        "mariadb-install-db",
        Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", my_data.display())),
    );
    procs.push(Proc::spawn(
        "mariadbd",
        Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1", "--skip-log-error"])
            .arg(format!("--datadir={}", my_data.display()))
            .arg(format!("--socket={}", dir.join("mariadb.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
            .arg(format!("--port={my_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    ));
    procs.push(Proc::spawn(
        "redis-server",
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--port"])
            .arg(redis_port.to_string())
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null()),
    ));
    wait_port(pg_port, "PostgreSQL");
    wait_port(my_port, "MariaDB");
    wait_port(redis_port, "Redis");
    *g = Some(Databases { dir, pg_port, my_port, redis_port, pg_data, procs });
    drop(g);
    schema(pg_port, my_port);
    (pg_port, my_port, redis_port)
}

/// The databases and tables the service queries (made before any agent runs).
fn schema(pg_port: u16, my_port: u16) {
    let script = format!(
        r#"
import time, psycopg, pymysql
c = psycopg.connect(host="127.0.0.1", port={pg_port}, user="postgres", dbname="postgres", autocommit=True)
c.execute("CREATE DATABASE shop")
c = psycopg.connect(host="127.0.0.1", port={pg_port}, user="postgres", dbname="shop", autocommit=True)
c.execute("CREATE TABLE customers (id bigint PRIMARY KEY, email text UNIQUE, visits int DEFAULT 0)")
c.execute("INSERT INTO customers (id, email) VALUES (1, 'seed@example.org')")
for i in range(100):
    try:
        m = pymysql.connect(host="127.0.0.1", port={my_port}, user="root", password="", autocommit=True)
        break
    except pymysql.MySQLError:
        time.sleep(0.1)
cur = m.cursor()
cur.execute("CREATE DATABASE shop")
cur.execute("CREATE TABLE shop.orders (id int AUTO_INCREMENT PRIMARY KEY, customer varchar(100), token varchar(100), amount bigint)")
cur.execute("INSERT INTO shop.orders (id, customer, token, amount) VALUES (1, 'seed@example.org', 'seed', 1)")
"#
    );
    run("the schema", Command::new(python()).arg("-c").arg(script));
}

fn service(http_port: u16, (pg, my, redis): (u16, u16, u16)) -> Proc {
    let mut p = Proc::spawn(
        "db_service",
        Command::new(python())
            .arg(peers_dir().join("db_service.py"))
            .args([http_port, pg, my, redis].map(|p| p.to_string()))
            .env("OTEL_SERVICE_NAME", "legacy-shop"),
    );
    wait_port(http_port, "db_service");
    p.assert_running();
    p
}

fn agent(jsonl: &Path, ports: &[u16]) -> Agent {
    let mut args = vec!["--output".to_owned(), format!("jsonl:{}", jsonl.display())];
    for p in ports {
        args.extend(["--port".to_owned(), p.to_string()]);
    }
    Agent::start(&args, &[])
}

/// The literals the service's queries carry (tests/peers/db_service.py `LITERALS`).
const LITERALS: [&str; 4] = ["ann.secret@example.com", "4242424242", "tok-hunter2-b64", "cart-value-s3cr3t"];

fn db_spans<'a>(spans: &'a [SpanRec], system: &str) -> Vec<&'a SpanRec> {
    spans.iter().filter(|s| s.attributes.get("db.system.name").and_then(|v| v.as_str()) == Some(system)).collect()
}

fn server_span<'a>(spans: &'a [SpanRec], path: &str) -> &'a SpanRec {
    let found: Vec<&SpanRec> = spans
        .iter()
        .filter(|s| s.kind == KIND_SERVER && s.attributes.get("url.path").and_then(|v| v.as_str()) == Some(path))
        .collect();
    assert_eq!(found.len(), 1, "one server span for {path}:\n{}", describe(spans));
    found[0]
}

#[test]
fn a_legacy_service_querying_three_databases_gets_sanitised_child_spans() {
    let dbs = databases();
    let dir = TempDir::new("db-chain");
    let [http_port] = free_ports();
    let jsonl = dir.path().join("spans.jsonl");
    let agent = agent(&jsonl, &[http_port, dbs.0, dbs.1, dbs.2]);
    let _service = service(http_port, dbs);
    assert_eq!(curl(http_port, "/order"), 200, "GET /order");
    // 1 server + 3 PostgreSQL (psycopg 3: prepare + execute, update; psycopg2: select)
    // + 2 MariaDB + 3 Redis, and the driver's own set-up calls.
    let want = |s: &[SpanRec]| {
        db_spans(s, "redis").len() >= 3 && db_spans(s, "mariadb").len() >= 2 && db_spans(s, "postgresql").len() >= 3
    };
    let spans = wait_for(Duration::from_secs(15), || Some(read_jsonl(&jsonl)).filter(|s| want(s)));
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let spans = spans.unwrap_or_else(|| read_jsonl(&jsonl));
    assert!(want(&spans), "database spans missing ({}):\n{}", exit.stats_line(), describe(&spans));

    let server = server_span(&spans, "/order");
    assert_eq!(server.service(), "legacy-shop", "{server:#?}");
    let calls: Vec<&SpanRec> = spans.iter().filter(|s| s.attributes.contains_key("db.system.name")).collect();
    for s in &calls {
        assert_eq!(s.kind, KIND_CLIENT, "{s:#?}");
        assert_eq!(s.trace_id, server.trace_id, "every call in the request's trace:\n{}", describe(&spans));
        assert_eq!(s.parent_span_id, server.span_id, "a child of the request that made it: {s:#?}");
        assert_eq!(s.service(), server.service());
        assert_eq!(s.attr_str("server.address"), "127.0.0.1");
        assert!(s.end_ns >= s.start_ns && s.start_ns >= server.start_ns && s.end_ns <= server.end_ns, "{s:#?}");
        // redis-py probes for features Redis 7.0 lacks (`CLIENT MAINT_NOTIFICATIONS`):
        // those fail, and say so; the service's own calls succeed.
        if !s.name.starts_with("CLIENT ") {
            assert_ne!(s.status_code, STATUS_ERROR, "{s:#?}");
        }
    }
    let texts = |system: &str| -> Vec<String> {
        db_spans(&spans, system)
            .iter()
            .filter_map(|s| s.attributes.get("db.query.text")?.as_str().map(str::to_owned))
            .collect()
    };

    // PostgreSQL: psycopg 3's extended protocol keeps its placeholders; psycopg2 inlined
    // the literals, which are hidden.
    let pg = db_spans(&spans, "postgresql");
    let pg_texts = texts("postgresql");
    assert!(pg_texts.iter().any(|t| t == "SELECT id, email FROM customers WHERE email = $1"), "{pg_texts:#?}");
    assert!(pg_texts.iter().any(|t| t == "UPDATE customers SET visits = visits + ? WHERE id = $1"), "{pg_texts:#?}");
    assert!(pg_texts.iter().any(|t| t == "SELECT id FROM customers WHERE email = ? AND id <> ?"), "{pg_texts:#?}");
    for s in &pg {
        assert_eq!(s.attr_str("db.namespace"), "shop");
        assert_eq!(s.attr_int("server.port"), i64::from(dbs.0));
    }
    let select = pg.iter().find(|s| s.attr_str("db.query.text").starts_with("SELECT id, email")).expect("the select");
    assert_eq!(select.name, "SELECT customers");
    assert_eq!(select.attr_str("db.operation.name"), "SELECT");
    assert_eq!(select.attr_str("db.collection.name"), "customers");

    // MariaDB: PyMySQL inlines every value.
    let my_texts = texts("mariadb");
    assert!(
        my_texts.iter().any(|t| t == "INSERT INTO orders (customer, token, amount) VALUES (?, ?, ?)"),
        "{my_texts:#?}"
    );
    assert!(my_texts.iter().any(|t| t == "SELECT id, amount FROM orders WHERE token = ?"), "{my_texts:#?}");
    let insert = db_spans(&spans, "mariadb").into_iter().find(|s| s.name == "INSERT orders").expect("INSERT orders");
    assert_eq!(insert.attr_str("db.namespace"), "shop");
    assert_eq!(insert.attr_int("server.port"), i64::from(dbs.1));

    // Redis: a pipeline of three in one write; command and key, never the value.
    let redis_texts = texts("redis");
    for want in ["SET cart:ann ?", "GET cart:ann", "INCRBY visits:ann ?"] {
        assert!(redis_texts.iter().any(|t| t == want), "{want}: {redis_texts:#?}");
    }
    let set = db_spans(&spans, "redis").into_iter().find(|s| s.name == "SET").expect("SET");
    assert_eq!(set.attr_str("db.operation.name"), "SET");
    assert_eq!(set.attr_str("db.namespace"), "0");

    // No literal the queries carried is anywhere in the output.
    let raw = std::fs::read_to_string(&jsonl).expect("read the JSONL");
    for literal in LITERALS {
        assert!(!raw.contains(literal), "`{literal}` left the agent:\n{raw}");
    }
    assert!(exit.stat("db.calls") >= 8, "{}", exit.stats_line());
    assert!(exit.stat("db.conns") >= 4, "{}", exit.stats_line());
    assert_eq!(exit.stat("drop.db_parse_error"), 0, "{}", exit.stats_line());
}

#[test]
fn database_errors_are_error_spans_with_their_codes() {
    let dbs = databases();
    let dir = TempDir::new("db-errors");
    let [http_port] = free_ports();
    let jsonl = dir.path().join("spans.jsonl");
    let agent = agent(&jsonl, &[http_port, dbs.0, dbs.1, dbs.2]);
    let _service = service(http_port, dbs);
    assert_eq!(curl(http_port, "/errors"), 200, "GET /errors");
    // The service's five failing calls (redis-py's failing feature probes aside).
    let errors =
        |s: &[SpanRec]| s.iter().filter(|s| s.status_code == STATUS_ERROR && !s.name.starts_with("CLIENT ")).count();
    let spans = wait_for(Duration::from_secs(15), || Some(read_jsonl(&jsonl)).filter(|s| errors(s) >= 5));
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let spans = spans.unwrap_or_else(|| read_jsonl(&jsonl));
    let server = server_span(&spans, "/errors");
    let failed: Vec<(String, String, String)> = spans
        .iter()
        .filter(|s| s.status_code == STATUS_ERROR)
        .map(|s| {
            assert_eq!(s.parent_span_id, server.span_id, "{s:#?}");
            assert_eq!(s.attr_str("error.type"), s.attr_str("db.response.status_code"));
            (s.attr_str("db.system.name"), s.attr_str("db.response.status_code"), s.name.clone())
        })
        .collect();
    for (system, code) in [
        ("postgresql", "42601"),
        ("postgresql", "23505"),
        ("mariadb", "1064"),
        ("mariadb", "1062"),
        ("redis", "WRONGTYPE"),
    ] {
        assert!(failed.iter().any(|(s, c, _)| s == system && c == code), "{system} {code}: {failed:#?}");
    }
    let raw = std::fs::read_to_string(&jsonl).expect("read the JSONL");
    for literal in LITERALS {
        assert!(!raw.contains(literal), "`{literal}` left the agent in an error:\n{raw}");
    }
    assert!(raw.contains("duplicate key value violates unique constraint"), "the server's message is kept:\n{raw}");
}

#[test]
fn hostile_bytes_on_database_connections_are_counted_and_the_next_call_is_traced() {
    let (pg_port, _, redis_port) = databases();
    let dir = TempDir::new("db-hostile");
    let jsonl = dir.path().join("spans.jsonl");
    let agent = agent(&jsonl, &[pg_port, redis_port]);
    run(
        "db_hostile.py",
        Command::new(python())
            .arg(peers_dir().join("db_hostile.py"))
            .args([pg_port.to_string(), redis_port.to_string()]),
    );
    let after = |s: &[SpanRec]| {
        s.iter().any(|s| s.attributes.get("db.query.text").and_then(|v| v.as_str()) == Some("GET hostile:after"))
    };
    let spans = wait_for(Duration::from_secs(10), || Some(read_jsonl(&jsonl)).filter(|s| after(s)));
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let spans = spans.unwrap_or_else(|| read_jsonl(&jsonl));
    assert!(after(&spans), "the call after the garbage:\n{}", describe(&spans));
    assert!(
        spans.iter().any(|s| s.attributes.get("db.query.text").and_then(|v| v.as_str()) == Some("SELECT ?")),
        "the PostgreSQL query before the garbage:\n{}",
        describe(&spans)
    );
    // One reset per connection that carried garbage (Redis and PostgreSQL).
    assert!(exit.stat("drop.db_parse_error") >= 2, "{}", exit.stats_line());
    assert!(!exit.stderr.contains("panicked"), "{}", exit.stderr);
}
