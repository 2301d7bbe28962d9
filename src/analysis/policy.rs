//! What the operator lets analysis reach. A namespace user who can write an
//! AnalysisTemplate chooses the address the controller calls and the
//! Secrets it reads; these rules keep that from turning the controller into
//! a way to reach internal hosts or other namespaces' credentials.

use std::fmt;

/// Shown instead of a Secret's value wherever a measurement is reported.
pub const REDACTED: &str = "*****";

/// The operator's analysis policy, from the controller's flags.
#[derive(Debug, Clone, Default)]
pub struct AnalysisPolicy {
    /// Metric provider addresses the controller may call; None allows all.
    pub allowed_addresses: Option<AddressAllowList>,
    /// Whether runs built from ClusterAnalysisTemplates may read Secrets.
    pub cluster_templates_read_secrets: bool,
}

/// Entries such as `prometheus.monitoring:9090`, `https://metrics.example.com`,
/// `*.monitoring.svc.cluster.local` or `127.0.0.1`. An entry matches on host
/// (exactly, or any subdomain for `*.`), and on scheme and port when it
/// names them. Paths are not part of an entry: the host is what is guarded.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressAllowList(Vec<AddressRule>);

#[derive(Debug, Clone, PartialEq)]
struct AddressRule {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
    text: String,
}

#[derive(Debug, Clone, PartialEq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` is stored as `.example.com`.
    Subdomain(String),
}

impl fmt::Display for AddressAllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<&str> = self.0.iter().map(|r| r.text.as_str()).collect();
        f.write_str(&entries.join(", "))
    }
}

impl AddressAllowList {
    /// Parses the operator's entries; no entries means no restriction.
    pub fn parse(entries: &[String]) -> Result<Option<Self>, String> {
        let rules = entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(AddressRule::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((!rules.is_empty()).then_some(AddressAllowList(rules)))
    }

    /// Ok when some entry allows the address; otherwise says what to change.
    pub fn check(&self, address: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(address).map_err(|e| {
            format!("metric address {address:?} is not a URL ({e}); write it as http://host:port")
        })?;
        let host = url
            .host_str()
            .ok_or_else(|| format!("metric address {address:?} has no host"))?
            .to_ascii_lowercase();
        let port = url.port_or_known_default();
        if self
            .0
            .iter()
            .any(|rule| rule.allows(url.scheme(), &host, port))
        {
            return Ok(());
        }
        Err(format!(
            "metric address {address:?} is not in the controller's allow-list ({self}); use an allowed address or ask the operator to add it to --metric-address-allow"
        ))
    }
}

impl AddressRule {
    fn parse(entry: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("--metric-address-allow entry {entry:?}: {why}");
        let (scheme, rest) = match entry.split_once("://") {
            Some((scheme, rest)) if scheme == "http" || scheme == "https" => {
                (Some(scheme.to_string()), rest)
            }
            Some((scheme, _)) => {
                return Err(bad(&format!("scheme {scheme:?} is not http or https")));
            }
            None => (None, entry),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad(
                "give scheme, host and port only (no path, query or user), e.g. https://prometheus.monitoring:9090",
            ));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs a closing ]"))?;
            let port = match after {
                "" => None,
                other => Some(
                    other
                        .strip_prefix(':')
                        .ok_or_else(|| bad("expected :port after ]"))?,
                ),
            };
            (format!("[{}]", host.to_ascii_lowercase()), port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
                None => (rest.to_ascii_lowercase(), None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| bad(&format!("port {p:?} is not a number from 0 to 65535")))
            })
            .transpose()?;
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                HostPattern::Subdomain(format!(".{domain}"))
            }
            _ if host.is_empty() => return Err(bad("the host is empty")),
            _ if host.contains('*') => {
                return Err(bad(
                    "a wildcard is only allowed as a leading *. (e.g. *.svc.cluster.local)",
                ));
            }
            _ => HostPattern::Exact(host),
        };
        Ok(AddressRule {
            scheme,
            host,
            port,
            text: entry.to_string(),
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let host_matches = match &self.host {
            HostPattern::Exact(exact) => host == exact,
            HostPattern::Subdomain(suffix) => host.ends_with(suffix.as_str()),
        };
        host_matches
            && self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// Replaces every Secret value in a text meant for status, Events or logs.
/// Longer values go first so one that contains another is hidden whole.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut values: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    values.sort_by_key(|s| std::cmp::Reverse(s.len()));
    values.into_iter().fold(text.to_string(), |text, secret| {
        text.replace(secret.as_str(), REDACTED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AddressAllowList {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        AddressAllowList::parse(&entries)
            .expect("valid entries")
            .expect("not empty")
    }

    #[test]
    fn no_entries_means_no_restriction() {
        assert_eq!(AddressAllowList::parse(&[]), Ok(None));
        assert_eq!(AddressAllowList::parse(&[" ".into()]), Ok(None));
    }

    #[test]
    fn host_entries_match_the_host_and_only_the_ports_and_schemes_they_name() {
        let allowed = list(&[
            "prometheus.monitoring:9090",
            "https://thanos.example.com",
            "*.metrics.svc.cluster.local",
            "127.0.0.1",
            "[::1]:9090",
        ]);
        for address in [
            "http://prometheus.monitoring:9090",
            "http://PROMETHEUS.monitoring:9090/prefix",
            "https://prometheus.monitoring:9090",
            "https://thanos.example.com",
            "https://thanos.example.com:8443/api",
            "http://prom.metrics.svc.cluster.local:9090",
            "http://127.0.0.1:41234",
            "http://[::1]:9090",
        ] {
            assert_eq!(allowed.check(address), Ok(()), "{address}");
        }
        for address in [
            "http://prometheus.monitoring:9091",
            "http://prometheus.monitoring",
            "http://thanos.example.com",
            "http://thanos.example.com:443",
            "http://metrics.svc.cluster.local",
            "http://evil-metrics.svc.cluster.local.attacker.io",
            "http://169.254.169.254/latest/meta-data",
            "http://prometheus.monitoring:9090@169.254.169.254/",
            "http://[::1]:9091",
            "not a url",
        ] {
            let refused = allowed.check(address);
            assert!(refused.is_err(), "{address} must be refused");
        }
        let message = allowed.check("http://10.0.0.1:80").expect_err("refused");
        assert!(
            message.contains("\"http://10.0.0.1:80\" is not in the controller's allow-list")
                && message.contains("--metric-address-allow")
                && message.contains("prometheus.monitoring:9090"),
            "{message}"
        );
    }

    #[test]
    fn malformed_entries_say_what_to_fix() {
        for (entry, expected) in [
            ("ftp://host", "is not http or https"),
            ("http://host/path", "no path"),
            ("user@host", "no path, query or user"),
            ("host:http", "is not a number"),
            ("*", "leading *."),
            (":9090", "the host is empty"),
            ("a.*.example.com", "leading *."),
            ("[::1", "closing ]"),
        ] {
            let error = AddressAllowList::parse(&[entry.to_string()]).expect_err(entry);
            assert!(
                error.contains(entry) && error.contains(expected),
                "{entry}: {error}"
            );
        }
    }

    #[test]
    fn redaction_hides_every_secret_even_overlapping_ones() {
        let secrets = vec!["abc".to_string(), "abcdef".to_string(), String::new()];
        assert_eq!(
            redact("token abcdef and abc, plain", &secrets),
            "token ***** and *****, plain"
        );
        assert_eq!(redact("nothing here", &secrets), "nothing here");
    }
}
