//! Kubernetes resource quantities ("250m", "1.5", "512Mi", "1G", "2e3") as plain numbers.

/// CPU in millicores: "250m" → 250, "1" → 1000, "1.5" → 1500.
pub fn cpu_millis(q: &str) -> Option<i64> {
    let v = parse(q)?;
    Some((v * 1000.0).ceil() as i64)
}

/// Bytes: "512Mi" → 536870912, "1G" → 1000000000, "100m" (rare) rounds up.
pub fn bytes(q: &str) -> Option<i64> {
    Some(parse(q)?.ceil() as i64)
}

fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (s, mult) in SUFFIXES {
        if let Some(num) = q.strip_suffix(s) {
            return num.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    // Plain numbers, including the decimal exponent form ("2e3").
    q.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_quantities() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("1"), Some(1000));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(cpu_millis("3920m"), Some(3920));
        assert_eq!(bytes("512Mi"), Some(536_870_912));
        assert_eq!(bytes("16069104Ki"), Some(16_069_104 * 1024));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("2e3"), Some(2000));
        assert_eq!(bytes("93478772582"), Some(93_478_772_582));
        assert_eq!(bytes("lots"), None);
    }
}
