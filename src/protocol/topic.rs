//! Topic names and topic filters (spec 4.7): validation, shared-subscription parsing and matching.

use thiserror::Error;

/// Why a topic name or filter is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character long [MQTT-4.7.3-1].
    #[error("empty topic")]
    Empty,
    /// A topic name must not contain `+` or `#` [MQTT-3.3.2-2].
    #[error("wildcard in a topic name")]
    WildcardInName,
    /// `#` must be the last character and occupy a whole level [MQTT-4.7.1-1].
    #[error("multi-level wildcard not alone at the end")]
    MisplacedMultiLevel,
    /// `+` must occupy a whole level [MQTT-4.7.1-2].
    #[error("single-level wildcard not alone in its level")]
    MisplacedSingleLevel,
    /// `$share/{name}/{filter}` with an empty or wildcard share name, or no filter [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    #[error("malformed shared subscription")]
    InvalidShare,
}

/// Checks a PUBLISH or Will topic name.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a SUBSCRIBE / UNSUBSCRIBE topic filter, including the `$share/{name}/` prefix.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    let plain = match parse_shared(filter) {
        Some(Ok(shared)) => shared.filter,
        Some(Err(e)) => return Err(e),
        None => filter,
    };
    validate_plain_filter(plain)
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevel);
        }
    }
    Ok(())
}

/// A `$share/{group}/{filter}` subscription, split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// `None` if the filter is not a shared subscription; otherwise its parts or why it is malformed.
pub fn parse_shared(filter: &str) -> Option<Result<SharedFilter<'_>, TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    let parsed = match rest.split_once('/') {
        Some((group, inner))
            if !group.is_empty() && !group.contains(['+', '#']) && !inner.is_empty() =>
        {
            Ok(SharedFilter {
                group,
                filter: inner,
            })
        }
        _ => Err(TopicError::InvalidShare),
    };
    Some(parsed)
}

/// Whether a (plain, valid) filter matches a topic name. Filters starting with a wildcard do not match
/// topics starting with `$` [MQTT-4.7.2-1]; `sport/#` also matches `sport` (spec 4.7.1.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut names = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if names.next().is_none() {
                    return false;
                }
            }
            exact => {
                if names.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    names.next().is_none()
}

/// True if the filter contains `+` or `#`.
pub fn has_wildcards(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_validation_table() {
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("a/b/c", Ok(())),
            ("#", Ok(())),
            ("+", Ok(())),
            ("a/+/c", Ok(())),
            ("a/#", Ok(())),
            ("/", Ok(())),
            ("a//b", Ok(())),
            ("+/+/#", Ok(())),
            ("$SYS/#", Ok(())),
            ("", Err(TopicError::Empty)),
            ("a/#/c", Err(TopicError::MisplacedMultiLevel)),
            ("a#", Err(TopicError::MisplacedMultiLevel)),
            ("a/b#", Err(TopicError::MisplacedMultiLevel)),
            ("a+", Err(TopicError::MisplacedSingleLevel)),
            ("a/+b/c", Err(TopicError::MisplacedSingleLevel)),
            ("$share/g/a/+", Ok(())),
            ("$share/g/#", Ok(())),
            ("$share//a", Err(TopicError::InvalidShare)),
            ("$share/g", Err(TopicError::InvalidShare)),
            ("$share/g/", Err(TopicError::InvalidShare)),
            ("$share/g+/a", Err(TopicError::InvalidShare)),
            ("$share/g/a#", Err(TopicError::MisplacedMultiLevel)),
        ];
        for (filter, expected) in cases {
            assert_eq!(validate_filter(filter), *expected, "filter {filter:?}");
        }
    }

    #[test]
    fn name_validation_table() {
        assert_eq!(validate_name("a/b"), Ok(()));
        assert_eq!(validate_name("/"), Ok(()));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/a", true),
            ("+", "/a", false),
            ("/+", "/a", true),
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/+", "$SYS/uptime", true),
            ("device/+/status", "device/42/status", true),
            ("device/+/status", "device/42/command", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), *expected, "{filter:?} vs {topic:?}");
        }
    }
}
