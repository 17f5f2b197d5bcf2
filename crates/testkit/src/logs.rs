//! Captures this test binary's log lines (tracing, `tailpass=info`), so a
//! test can check that a refusal was access-logged and why.

static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;
impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once per process).
pub fn capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("tailpass=info")
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// A position in the captured log.
pub fn mark() -> usize {
    LOGS.lock().unwrap().len()
}

/// Log text written since `mark`.
pub fn since(mark: usize) -> String {
    let l = LOGS.lock().unwrap();
    String::from_utf8_lossy(&l[mark.min(l.len())..]).into_owned()
}

/// Access-log lines since `mark` for `path` (as the client sent it).
pub fn access_lines(mark: usize, path: &str) -> Vec<String> {
    since(mark)
        .lines()
        // Text logs quote the path (`path="/a b"`), as Rust's Debug does.
        .filter(|l| l.contains("tailpass::access") && l.contains(&format!("path={path:?} ")))
        .map(str::to_string)
        .collect()
}
