//! Resource search: the token index written with every resource and the
//! query shape of [`crate::Store::resource_search`].
//!
//! The store gives tokens no meaning: the caller computes them (for example
//! `("identifier", "https://…|123")`, `("status", "active")`) and a search
//! matches by exact string equality only. The index holds the tokens of the
//! **current** version of each resource and is replaced on every write of
//! that resource (changed or not, so a mapping fix re-indexes on replay).
//!
//! Paging is keyset paging on `(last_updated, id)`. The store stamps
//! `last_updated` strictly increasing per store instance for every write
//! that changes something, so a row written after a page was read always
//! sorts after that page's cursor: paging never skips or repeats a row
//! under concurrent inserts.

use chrono::{DateTime, Utc};

use crate::{valid_fhir_id, valid_resource_type, StoreError, MAX_PATIENT_ID_LEN};

/// Most tokens one resource write may carry.
pub const MAX_TOKENS_PER_RESOURCE: usize = 256;
/// Longest token `param` (bytes).
pub const MAX_TOKEN_PARAM_LEN: usize = 64;
/// Longest token `value` (bytes).
pub const MAX_TOKEN_VALUE_LEN: usize = 512;
/// Largest page [`crate::Store::resource_search`] returns; larger limits are clamped.
pub const MAX_SEARCH_PAGE: usize = 1000;
/// Most `_id` values in one query.
pub const MAX_QUERY_IDS: usize = 100;
/// Most ids in one [`crate::Store::resource_get_many`].
pub const MAX_GET_IDS: usize = 1000;
/// Most parameters in one query.
pub const MAX_QUERY_PARAMS: usize = 16;
/// Most values of one parameter in one query.
pub const MAX_QUERY_VALUES: usize = 100;
/// Most `_lastUpdated` comparisons in one query.
pub const MAX_QUERY_DATES: usize = 4;

/// One search token of a resource: `(param, value)`, matched exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchToken {
    /// Search parameter name, e.g. `identifier`, `status`.
    pub param: String,
    /// Token value, e.g. `system|value`; exact string match, no semantics.
    pub value: String,
}

impl SearchToken {
    /// Convenience constructor.
    pub fn new(param: impl Into<String>, value: impl Into<String>) -> Self {
        SearchToken {
            param: param.into(),
            value: value.into(),
        }
    }
}

/// A comparison on `last_updated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// Strictly after.
    Gt,
    /// At or after.
    Ge,
    /// Strictly before.
    Lt,
    /// At or before.
    Le,
}

impl Cmp {
    /// The SQL operator.
    pub(crate) fn sql_op(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
        }
    }
}

/// A search over current resources of one type. Filters combine with AND;
/// the values of one parameter combine with OR.
#[derive(Debug, Clone, Default)]
pub struct ResourceQuery {
    /// Resource type (required).
    pub resource_type: String,
    /// `_id`: any of these (empty = no filter).
    pub ids: Vec<String>,
    /// Each `(param, values)`: the resource has a token `(param, v)` for ANY
    /// `v`; all params must match. A param with no values matches nothing.
    pub params: Vec<(String, Vec<String>)>,
    /// Patient compartment.
    pub patient_id: Option<String>,
    /// `_lastUpdated` comparisons; all must hold.
    pub last_updated: Vec<(Cmp, DateTime<Utc>)>,
    /// Keyset cursor: only rows strictly after `(last_updated, id)`.
    pub after: Option<(DateTime<Utc>, String)>,
    /// Page size, clamped to [`MAX_SEARCH_PAGE`]; 0 returns nothing.
    pub limit: usize,
}

/// What validating a query found.
pub(crate) enum QueryCheck {
    /// Run it.
    Run,
    /// It cannot match anything (unknown-shaped id, empty value list …).
    Empty,
}

/// Check bounds; errors name the field, never values.
pub(crate) fn check_query(q: &ResourceQuery) -> Result<QueryCheck, StoreError> {
    let bad = |what: &str| Err(StoreError::Invalid(format!("search: {what}")));
    if !valid_resource_type(&q.resource_type) {
        return bad("resource_type is not a FHIR resource type name");
    }
    if q.ids.len() > MAX_QUERY_IDS {
        return bad(&format!("more than {MAX_QUERY_IDS} _id values"));
    }
    if q.params.len() > MAX_QUERY_PARAMS {
        return bad(&format!("more than {MAX_QUERY_PARAMS} parameters"));
    }
    if q.last_updated.len() > MAX_QUERY_DATES {
        return bad(&format!(
            "more than {MAX_QUERY_DATES} _lastUpdated comparisons"
        ));
    }
    let mut empty = q.limit == 0;
    for (param, values) in &q.params {
        if param.is_empty() || param.len() > MAX_TOKEN_PARAM_LEN {
            return bad("parameter name is empty or too long");
        }
        if values.len() > MAX_QUERY_VALUES {
            return bad(&format!(
                "more than {MAX_QUERY_VALUES} values for one parameter"
            ));
        }
        if values.is_empty() {
            empty = true;
        }
        if values.iter().any(|v| v.len() > MAX_TOKEN_VALUE_LEN) {
            return bad("parameter value too long");
        }
    }
    if let Some(p) = &q.patient_id {
        if p.is_empty() || p.len() > MAX_PATIENT_ID_LEN {
            empty = true;
        }
    }
    if !q.ids.is_empty() && !q.ids.iter().any(|id| valid_fhir_id(id)) {
        empty = true;
    }
    if let Some((_, id)) = &q.after {
        if id.len() > crate::MAX_RESOURCE_ID_LEN {
            return bad("cursor id too long");
        }
    }
    Ok(if empty {
        QueryCheck::Empty
    } else {
        QueryCheck::Run
    })
}

/// Validate and de-duplicate the tokens of write `i` (order kept).
pub(crate) fn prepare_tokens(
    i: usize,
    tokens: Vec<SearchToken>,
) -> Result<Vec<SearchToken>, StoreError> {
    let bad = |what: &str| StoreError::Invalid(format!("write {i}: {what}"));
    if tokens.len() > MAX_TOKENS_PER_RESOURCE {
        return Err(bad(&format!(
            "more than {MAX_TOKENS_PER_RESOURCE} search tokens"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(tokens.len());
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        if t.param.is_empty() || t.param.len() > MAX_TOKEN_PARAM_LEN {
            return Err(bad("search token param is empty or too long"));
        }
        if t.value.len() > MAX_TOKEN_VALUE_LEN {
            return Err(bad("search token value too long"));
        }
        if seen.insert(t.clone()) {
            out.push(t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> ResourceQuery {
        ResourceQuery {
            resource_type: "Patient".into(),
            limit: 10,
            ..ResourceQuery::default()
        }
    }

    #[test]
    fn query_bounds() {
        assert!(matches!(check_query(&q()), Ok(QueryCheck::Run)));
        let mut bad_type = q();
        bad_type.resource_type = "patient".into();
        assert!(check_query(&bad_type).is_err());
        let mut many_ids = q();
        many_ids.ids = vec!["a".into(); MAX_QUERY_IDS + 1];
        assert!(check_query(&many_ids).is_err());
        let mut empty_values = q();
        empty_values.params = vec![("status".into(), vec![])];
        assert!(matches!(check_query(&empty_values), Ok(QueryCheck::Empty)));
        let mut zero = q();
        zero.limit = 0;
        assert!(matches!(check_query(&zero), Ok(QueryCheck::Empty)));
        let mut bad_ids = q();
        bad_ids.ids = vec!["a/b".into()];
        assert!(matches!(check_query(&bad_ids), Ok(QueryCheck::Empty)));
        let mut long_value = q();
        long_value.params = vec![("x".into(), vec!["v".repeat(MAX_TOKEN_VALUE_LEN + 1)])];
        let msg = check_query(&long_value).err().unwrap().to_string();
        assert!(!msg.contains("vvv"), "{msg}");
    }

    #[test]
    fn tokens_are_checked_and_deduplicated() {
        let t = prepare_tokens(
            0,
            vec![
                SearchToken::new("status", "active"),
                SearchToken::new("status", "active"),
                SearchToken::new("identifier", "|1"),
            ],
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert!(prepare_tokens(0, vec![SearchToken::new("", "x")]).is_err());
        assert!(prepare_tokens(0, vec![SearchToken::new("a", "x"); 257]).is_err());
    }
}
