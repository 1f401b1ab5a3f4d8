//! ACL files in Mosquitto's format:
//!
//! ```text
//! topic read $SYS/#              # before any `user` line: rules for anonymous clients
//! user alice
//! topic readwrite device/alice/#  # access: read | write | readwrite (default) | deny
//! pattern write device/%c/status  # for every client; %u user name, %c client id
//! ```
//!
//! A matching `deny` rule wins; otherwise access needs a matching rule that grants it. Substitutions holding
//! `/`, `+` or `#` never match (a client id cannot widen its own rule).

use crate::protocol::topic;
use std::collections::HashMap;
use thiserror::Error;

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn grants_read(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }
    fn grants_write(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
    /// %u / %c are replaced (always for `pattern` lines and roles; never for Mosquitto `topic` lines).
    substitute: bool,
}

/// `filter` with %u and %c replaced; `None` when a value is missing or would widen the filter.
fn substitute(filter: &str, who: Who<'_>) -> Option<String> {
    let unsafe_value = |v: &str| v.contains(['/', '+', '#']);
    let mut f = filter.to_string();
    if f.contains("%u") {
        match who.username {
            Some(u) if !unsafe_value(u) => f = f.replace("%u", u),
            _ => return None,
        }
    }
    if f.contains("%c") {
        if unsafe_value(who.client_id) {
            return None;
        }
        f = f.replace("%c", who.client_id);
    }
    Some(f)
}

/// A line the ACL parser does not understand.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct AclError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

impl Acl {
    pub fn parse(text: &str, file: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| AclError {
                file: file.to_string(),
                line: i + 1,
                message,
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a name".into()));
                    }
                    current = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        Some((a @ ("read" | "write" | "readwrite" | "deny"), f)) => (a, f.trim()),
                        _ => ("readwrite", rest),
                    };
                    if filter.is_empty() {
                        return Err(err(format!("`{keyword}` needs a topic filter")));
                    }
                    // Substitutions are checked after they are made; the rest must be a valid filter.
                    let probe = filter.replace("%u", "u").replace("%c", "c");
                    topic::validate_filter(&probe)
                        .map_err(|e| err(format!("invalid filter {filter:?}: {e}")))?;
                    let rule = Rule {
                        access: match access {
                            "read" => Access::Read,
                            "write" => Access::Write,
                            "deny" => Access::Deny,
                            _ => Access::ReadWrite,
                        },
                        filter: filter.to_string(),
                        substitute: keyword == "pattern",
                    };
                    match (keyword, &current) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, None) => acl.anonymous.push(rule),
                        (_, Some(user)) => acl.users.entry(user.clone()).or_default().push(rule),
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// The rules that apply to a client, patterns substituted.
    fn rules(&self, who: Who<'_>) -> Vec<(Access, String)> {
        let own = match who.username {
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or(&[]),
            None => &self.anonymous,
        };
        let mut out: Vec<(Access, String)> = own
            .iter()
            .filter_map(|r| {
                if r.substitute {
                    substitute(&r.filter, who).map(|f| (r.access, f))
                } else {
                    Some((r.access, r.filter.clone()))
                }
            })
            .collect();
        out.extend(
            self.patterns
                .iter()
                .filter_map(|p| substitute(&p.filter, who).map(|f| (p.access, f))),
        );
        out
    }

    /// Rules from the role form (TOML, or JSON when `json`): roles of publish / subscribe filters (with %u and
    /// %c), users → roles, `anonymous` → roles.
    ///
    /// ```toml
    /// anonymous = ["viewer"]
    /// [roles.device]
    /// publish = ["device/%c/status"]
    /// subscribe = ["device/%c/command/#"]
    /// [users]
    /// backend = ["operator"]
    /// ```
    pub fn from_roles(text: &str, file: &str, json: bool) -> Result<Acl, AclError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Role {
            #[serde(default)]
            publish: Vec<String>,
            #[serde(default)]
            subscribe: Vec<String>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Roles {
            #[serde(default)]
            roles: HashMap<String, Role>,
            #[serde(default)]
            users: HashMap<String, Vec<String>>,
            #[serde(default)]
            anonymous: Vec<String>,
        }
        let err = |line: usize, message: String| AclError {
            file: file.to_string(),
            line,
            message,
        };
        let parsed: Roles = if json {
            serde_json::from_str(text).map_err(|e| err(e.line(), e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start].matches('\n').count() + 1)
                    .unwrap_or(1);
                err(line, e.message().to_string())
            })?
        };
        let mut acl = Acl::default();
        let rules_of = |names: &[String]| -> Result<Vec<Rule>, AclError> {
            let mut out = Vec::new();
            for name in names {
                let role = parsed
                    .roles
                    .get(name)
                    .ok_or_else(|| err(1, format!("unknown role {name:?}")))?;
                for (filters, access) in [
                    (&role.publish, Access::Write),
                    (&role.subscribe, Access::Read),
                ] {
                    for f in filters {
                        topic::validate_filter(&f.replace("%u", "u").replace("%c", "c")).map_err(
                            |e| err(1, format!("role {name:?}: invalid filter {f:?}: {e}")),
                        )?;
                        out.push(Rule {
                            access,
                            filter: f.clone(),
                            substitute: true,
                        });
                    }
                }
            }
            Ok(out)
        };
        acl.anonymous = rules_of(&parsed.anonymous)?;
        for (user, roles) in &parsed.users {
            acl.users.insert(user.clone(), rules_of(roles)?);
        }
        Ok(acl)
    }

    /// Rules for every client from two filter lists (a token's `publish` and `subscribe` claims), `%u` and
    /// `%c` substituted; the error names the bad filter.
    pub fn from_filters(publish: &[String], subscribe: &[String]) -> Result<Acl, String> {
        let mut acl = Acl::default();
        for (filters, access) in [(publish, Access::Write), (subscribe, Access::Read)] {
            for f in filters {
                topic::validate_filter(&f.replace("%u", "u").replace("%c", "c"))
                    .map_err(|e| format!("invalid filter {f:?}: {e}"))?;
                acl.patterns.push(Rule {
                    access,
                    filter: f.clone(),
                    substitute: true,
                });
            }
        }
        Ok(acl)
    }

    /// Adds another rule set's rules to this one (an ACL file and a role file together).
    pub fn merge(&mut self, other: Acl) {
        self.anonymous.extend(other.anonymous);
        self.patterns.extend(other.patterns);
        for (u, rules) in other.users {
            self.users.entry(u).or_default().extend(rules);
        }
    }

    fn check(&self, who: Who<'_>, topic_name: &str, grants: impl Fn(Access) -> bool) -> bool {
        let rules = self.rules(who);
        let matching = || rules.iter().filter(|(_, f)| topic::matches(f, topic_name));
        !matching().any(|(a, _)| *a == Access::Deny) && matching().any(|(a, _)| grants(*a))
    }

    /// May this client publish to `topic_name`?
    pub fn can_publish(&self, who: Who<'_>, topic_name: &str) -> bool {
        self.check(who, topic_name, Access::grants_write)
    }

    /// May this client receive a message published to `topic_name`?
    pub fn can_read(&self, who: Who<'_>, topic_name: &str) -> bool {
        self.check(who, topic_name, Access::grants_read)
    }

    /// May this client subscribe to `filter`: a read rule covers everything it matches and no deny rule covers
    /// it. Messages are still checked one by one on delivery (a deny inside an allowed wildcard).
    pub fn can_subscribe(&self, who: Who<'_>, filter: &str) -> bool {
        let rules = self.rules(who);
        !rules
            .iter()
            .any(|(a, f)| *a == Access::Deny && covers(f, filter))
            && rules
                .iter()
                .any(|(a, f)| a.grants_read() && covers(f, filter))
    }
}

/// Whether every topic `sub` matches is matched by `rule` (both filters).
pub fn covers(rule: &str, sub: &str) -> bool {
    if sub.starts_with('$') != rule.starts_with('$')
        && (rule.starts_with(['+', '#']) || sub.starts_with(['+', '#']))
    {
        // Leading wildcards never reach `$` topics [MQTT-4.7.2-1].
        return !sub.starts_with(['+', '#']) && topic::matches(rule, sub);
    }
    let r: Vec<&str> = rule.split('/').collect();
    let s: Vec<&str> = sub.split('/').collect();
    let mut i = 0;
    loop {
        match (r.get(i), s.get(i)) {
            (Some(&"#"), _) => return true,
            (None, None) => return true,
            (Some(_), Some(&"#")) | (None, Some(_)) => return false,
            (Some(_), None) => return r.len() == i + 1 && r[i] == "#",
            (Some(&"+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && *b != "+" => {}
            _ => return false,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite device/alice/#
topic deny device/alice/secret
topic write logs

user bob
topic read device/#

pattern write device/%c/status
pattern read inbox/%u/#
";

    fn who<'a>(u: Option<&'a str>, c: &'a str) -> Who<'a> {
        Who {
            username: u,
            client_id: c,
        }
    }

    #[test]
    fn user_rules_read_write_and_deny() {
        let acl = Acl::parse(FILE, "acl").unwrap();
        let alice = who(Some("alice"), "a1");
        assert!(acl.can_publish(alice, "device/alice/temp"));
        assert!(acl.can_read(alice, "device/alice/temp"));
        assert!(!acl.can_publish(alice, "device/alice/secret"), "deny wins");
        assert!(!acl.can_read(alice, "device/alice/secret"));
        assert!(
            acl.can_publish(alice, "logs") && !acl.can_read(alice, "logs"),
            "write only"
        );
        assert!(!acl.can_publish(alice, "device/bob/temp"));
        let bob = who(Some("bob"), "b1");
        assert!(
            acl.can_read(bob, "device/alice/temp") && !acl.can_publish(bob, "device/alice/temp")
        );
    }

    #[test]
    fn anonymous_rules_come_before_any_user_line() {
        let acl = Acl::parse(FILE, "acl").unwrap();
        let anon = who(None, "x");
        assert!(acl.can_read(anon, "public/news"));
        assert!(!acl.can_publish(anon, "public/news"));
        assert!(!acl.can_read(anon, "device/alice/temp"));
        assert!(
            !acl.can_read(who(Some("alice"), "a"), "public/news"),
            "users do not get anonymous rules"
        );
    }

    #[test]
    fn patterns_substitute_client_id_and_user_name_safely() {
        let acl = Acl::parse(FILE, "acl").unwrap();
        assert!(acl.can_publish(who(None, "esp32-7"), "device/esp32-7/status"));
        assert!(!acl.can_publish(who(None, "esp32-7"), "device/esp32-8/status"));
        assert!(acl.can_read(who(Some("carol"), "c"), "inbox/carol/1"));
        assert!(
            !acl.can_read(who(None, "c"), "inbox/carol/1"),
            "%u needs a user name"
        );
        assert!(
            !acl.can_publish(who(None, "+"), "device/x/status"),
            "a wildcard id does not widen the rule"
        );
        assert!(!acl.can_read(who(Some("#"), "c"), "inbox/anything/1"));
    }

    #[test]
    fn subscriptions_must_be_covered_by_a_read_rule() {
        let acl = Acl::parse(FILE, "acl").unwrap();
        let bob = who(Some("bob"), "b");
        assert!(acl.can_subscribe(bob, "device/#"));
        assert!(acl.can_subscribe(bob, "device/+/temp"));
        assert!(!acl.can_subscribe(bob, "#"), "wider than the rule");
        let alice = who(Some("alice"), "a");
        assert!(
            acl.can_subscribe(alice, "device/alice/+"),
            "allowed; the secret is filtered on delivery"
        );
        assert!(
            !acl.can_subscribe(alice, "device/alice/secret"),
            "covered by deny"
        );
        assert!(!acl.can_subscribe(alice, "logs"), "write only");
    }

    #[test]
    fn roles_become_rules_with_substitutions() {
        let toml = "anonymous = [\"viewer\"]\n[roles.viewer]\nsubscribe = [\"public/#\"]\n[roles.device]\npublish = [\"device/%c/status\"]\nsubscribe = [\"device/%c/command/#\"]\n[users]\nesp = [\"device\", \"viewer\"]\n";
        let acl = Acl::parse_roles_for_test(toml, false);
        let esp = who(Some("esp"), "esp32-7");
        assert!(acl.can_publish(esp, "device/esp32-7/status"));
        assert!(!acl.can_publish(esp, "device/esp32-8/status"));
        assert!(acl.can_subscribe(esp, "device/esp32-7/command/#"));
        assert!(acl.can_read(esp, "public/x") && !acl.can_publish(esp, "public/x"));
        assert!(acl.can_read(who(None, "a"), "public/x"));
        let json = r#"{"roles": {"r": {"publish": ["a/#"]}}, "users": {"u": ["r"]}}"#;
        assert!(Acl::parse_roles_for_test(json, true).can_publish(who(Some("u"), "c"), "a/b"));
        let e = Acl::from_roles("[users]\nu = [\"missing\"]\n", "r.toml", false).unwrap_err();
        assert!(e.to_string().contains("unknown role \"missing\""), "{e}");
        let e = Acl::from_roles("[roles.x]\npublsh = []\n", "r.toml", false).unwrap_err();
        assert!(e.to_string().starts_with("r.toml:2:"), "{e}");
    }

    impl Acl {
        fn parse_roles_for_test(text: &str, json: bool) -> Acl {
            Acl::from_roles(text, "roles", json).unwrap()
        }
    }

    #[test]
    fn covering_table() {
        for (rule, sub, want) in [
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/b", "a/+", false),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("+/b", "a/b", true),
            ("a", "a/b", false),
        ] {
            assert_eq!(covers(rule, sub), want, "{rule} covers {sub}");
        }
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = Acl::parse("user a\ntopic\n", "acl").unwrap_err();
        assert_eq!((e.line, e.file.as_str()), (2, "acl"));
        let e = Acl::parse("user a\nfoo bar\n", "acl").unwrap_err();
        assert!(e.to_string().contains("unknown keyword"));
        assert!(Acl::parse("topic read a/#/b\n", "acl").is_err());
    }
}
