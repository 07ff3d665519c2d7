//! The figures of one run: a table on stdout, JSON with `--json`.

/// One figure.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
}

/// Everything measured in one run.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn add(
        &mut self,
        scenario: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        let r = Row {
            scenario,
            metric: metric.into(),
            value,
            unit,
        };
        eprintln!(
            "  {:<10} {:<44} {:>14.2} {}",
            r.scenario, r.metric, r.value, r.unit
        );
        self.rows.push(r);
    }

    pub fn table(&self) -> String {
        let mut s = format!("{:<10} {:<44} {:>14} unit\n", "scenario", "metric", "value");
        for r in &self.rows {
            s.push_str(&format!(
                "{:<10} {:<44} {:>14.2} {}\n",
                r.scenario, r.metric, r.value, r.unit
            ));
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "machine": machine(),
            "rows": self.rows.iter().map(|r| serde_json::json!({
                "scenario": r.scenario, "metric": r.metric, "value": r.value, "unit": r.unit,
            })).collect::<Vec<_>>(),
        })
    }
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} cores, {model}")
}
