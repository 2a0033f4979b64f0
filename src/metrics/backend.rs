//! The `[METRICS]` lines a Python worker prints.

/// A `[METRICS]` line a worker prints:
/// `[METRICS]Name.Unit:value|#Dim:v,Dim2:v[|#type:GAUGE]|#hostname:h,timestamp[,request_id]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendMetric {
    pub name: String,
    pub unit: String,
    pub value: f64,
    pub dimensions: Vec<(String, String)>,
    /// `COUNTER`, `GAUGE` or `HISTOGRAM` when the line says.
    pub kind: Option<String>,
    pub request_id: Option<String>,
}

impl BackendMetric {
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("[METRICS]")?;
        let mut parts = rest.split("|#");
        let (head, dims) = (parts.next()?, parts.next()?);
        let (name_unit, value) = head.rsplit_once(':')?;
        let (name, unit) = name_unit.split_once('.')?;
        let mut kind = None;
        let mut request_id = None;
        let mut host_seen = false;
        for part in parts {
            if let Some(t) = part.strip_prefix("type:") {
                kind = Some(t.to_string());
            } else if part.starts_with("hostname:") {
                host_seen = true;
                request_id = part.split(',').nth(2).map(str::to_string);
            }
        }
        if !host_seen {
            return None;
        }
        let dimensions = dims
            .split(',')
            .filter_map(|d| d.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Self {
            name: name.to_string(),
            unit: unit.to_string(),
            value: value.trim().parse().ok()?,
            dimensions,
            kind,
            request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_parse() {
        let m = BackendMetric::parse(
            "[METRICS]HandlerTime.Milliseconds:12.5|#ModelName:echo,Level:Model|#hostname:h,1700000000,req-1",
        )
        .unwrap();
        assert_eq!(
            (m.name.as_str(), m.unit.as_str(), m.value),
            ("HandlerTime", "Milliseconds", 12.5)
        );
        assert_eq!(
            m.dimensions,
            vec![
                ("ModelName".into(), "echo".into()),
                ("Level".into(), "Model".into())
            ]
        );
        assert_eq!(m.request_id.as_deref(), Some("req-1"));
        let m = BackendMetric::parse(
            "[METRICS]HandlerTime.ms:1.5|#ModelName:m,Level:Model|#type:GAUGE|#hostname:h,1700000000,r2",
        )
        .unwrap();
        assert_eq!(
            (m.kind.as_deref(), m.request_id.as_deref()),
            (Some("GAUGE"), Some("r2"))
        );
        let m = BackendMetric::parse(
            "[METRICS]PredictionTime.ms:3|#ModelName:m|#hostname:h,1700000000",
        )
        .unwrap();
        assert_eq!(m.request_id, None);
        assert!(BackendMetric::parse("[METRICS]garbage").is_none());
        assert!(BackendMetric::parse("not a metric").is_none());
    }
}
