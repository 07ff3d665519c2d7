//! Query-string parsing that rejects what an operator would want to hear about: unknown
//! parameters (typos), repeated ones, and values of the wrong type — each by name.

use std::collections::HashMap;

use super::error::ApiError;

/// Decoded query parameters, each present at most once.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses `query`, allowing only the names in `allowed`.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                let shown: String = k.chars().take(64).collect();
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{shown}`; allowed: {}",
                    allowed.join(", ")
                )));
            }
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(ApiError::bad_request(format!(
                    "parameter `{k}` given more than once"
                )));
            }
        }
        Ok(Params(map))
    }

    /// A parameter that must be present and non-empty.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.0.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(ApiError::bad_request(format!(
                "parameter `{name}` must not be empty"
            ))),
            None => Err(ApiError::bad_request(format!("missing parameter `{name}`"))),
        }
    }

    pub fn optional(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An optional non-negative integer.
    pub fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.optional(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    let shown: String = v.chars().take(32).collect();
                    ApiError::bad_request(format!(
                        "parameter `{name}` must be a non-negative integer, not {shown:?}"
                    ))
                })
            })
            .transpose()
    }

    /// An optional parameter that must be one of `options`; absent means the first.
    pub fn one_of(&self, name: &str, options: &[&'static str]) -> Result<&'static str, ApiError> {
        match self.optional(name) {
            None => Ok(options[0]),
            Some(v) => options.iter().copied().find(|o| *o == v).ok_or_else(|| {
                let shown: String = v.chars().take(32).collect();
                ApiError::bad_request(format!(
                    "parameter `{name}` must be {}, not {shown:?}",
                    options.join(" or ")
                ))
            }),
        }
    }

    /// An optional boolean (`true`/`false`/`1`/`0`).
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.optional(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(v) => {
                let shown: String = v.chars().take(32).collect();
                Err(ApiError::bad_request(format!(
                    "parameter `{name}` must be true or false, not {shown:?}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_repeated_and_mistyped() {
        let allowed = ["host", "from"];
        assert!(Params::parse(Some("hots=a"), &allowed)
            .unwrap_err()
            .message
            .contains("hots"));
        assert!(Params::parse(Some("host=a&host=b"), &allowed)
            .unwrap_err()
            .message
            .contains("more than once"));
        let p = Params::parse(Some("host=a%2Fb&from=-1"), &allowed).expect("parses");
        assert_eq!(p.required("host").expect("host"), "a/b");
        assert!(p.number("from").unwrap_err().message.contains("from"));
        let p = Params::parse(None, &allowed).expect("parses");
        assert!(p
            .required("host")
            .unwrap_err()
            .message
            .contains("missing parameter `host`"));
    }
}
