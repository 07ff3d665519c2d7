//! Listings: hosts, a host's files and a file's generations, paged with `ZRANGEBYLEX`.

use super::*;

impl Inner {
    pub(super) async fn generations(
        &self,
        host: &str,
        file: &str,
    ) -> Result<Vec<GenerationInfo>, StoreError> {
        let names: Vec<(String, u64)> = self
            .cmd(
                "listing generations",
                redis::cmd("HGETALL")
                    .arg(self.keys.gens(host, file))
                    .clone(),
            )
            .await?;
        let metas = try_join_all(names.into_iter().map(|(name, id)| async move {
            let mut c = redis::cmd("HMGET");
            c.arg(self.keys.meta(id))
                .arg("state")
                .arg("lines")
                .arg("max_line")
                .arg("first")
                .arg("last")
                .arg("trim");
            let v: Vec<Option<String>> = self.cmd("reading a generation", c).await?;
            Ok::<_, StoreError>((name, id, v))
        }))
        .await?;
        let mut out = Vec::new();
        for (name, id, v) in metas {
            if v.first().and_then(|s| s.as_deref()) != Some("live") {
                continue;
            }
            let n = |i: usize| {
                v.get(i)
                    .and_then(|s| s.as_deref())
                    .and_then(|s| s.parse::<u64>().ok())
            };
            let Some(max_line) = n(2) else {
                // Created, not yet written.
                continue;
            };
            out.push(GenerationInfo {
                name,
                id,
                lines: n(1).unwrap_or(0),
                max_line,
                // Known once retention has trimmed it: lines before it are gone.
                first_line: n(5).map(|b| b * LINES_PER_BUCKET),
                first_write: to_time(n(3).unwrap_or(0)),
                last_write: to_time(n(4).unwrap_or(0)),
            });
        }
        out.sort_by_key(|g| g.id);
        Ok(out)
    }

    /// Up to `limit` names of a lexically ordered set after `after` (exclusive) or from
    /// `from` (inclusive).
    pub(super) async fn range(
        &self,
        key: String,
        start: Bound<'_>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let min = match start {
            Bound::All => "-".to_owned(),
            Bound::After(a) => format!("({a}"),
            Bound::From(a) => format!("[{a}"),
        };
        let count = i64::try_from(limit).unwrap_or(-1);
        let mut c = redis::cmd("ZRANGEBYLEX");
        c.arg(key).arg(min).arg("+").arg("LIMIT").arg(0).arg(count);
        self.cmd("listing", c).await
    }

    pub(super) async fn files(
        &self,
        host: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<FileInfo>, StoreError> {
        let mut out = Vec::new();
        let mut host_start = match (host, after) {
            (Some(h), _) => Some(h.to_owned()),
            (None, Some((h, _))) => self
                .range(self.keys.hosts(), Bound::From(h), 1)
                .await?
                .into_iter()
                .next(),
            (None, None) => self
                .range(self.keys.hosts(), Bound::All, 1)
                .await?
                .into_iter()
                .next(),
        };
        while let Some(h) = host_start.take() {
            let mut file_after = match after {
                Some((ah, af)) if ah == h => Some(af.to_owned()),
                _ => None,
            };
            // A file whose generations are all being created or dropped is not listed; the
            // page is filled from the files after it, so a short page still means the end.
            while out.len() < limit {
                let start = file_after.as_deref().map_or(Bound::All, Bound::After);
                let files = self
                    .range(self.keys.files(&h), start, limit - out.len())
                    .await?;
                let Some(last) = files.last().cloned() else {
                    break;
                };
                let infos = try_join_all(files.into_iter().map(|f| {
                    let h = h.clone();
                    async move {
                        let generations = self.generations(&h, &f).await?;
                        Ok::<_, StoreError>(FileInfo {
                            host: h,
                            file: f,
                            generations,
                        })
                    }
                }))
                .await?;
                out.extend(infos.into_iter().filter(|f| !f.generations.is_empty()));
                file_after = Some(last);
            }
            if out.len() >= limit || host.is_some() {
                break;
            }
            host_start = self
                .range(self.keys.hosts(), Bound::After(&h), 1)
                .await?
                .into_iter()
                .next();
        }
        Ok(out)
    }
}

/// Where a listing starts.
pub(super) enum Bound<'a> {
    All,
    After(&'a str),
    From(&'a str),
}
