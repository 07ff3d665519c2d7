//! Reads: a host's files and generations, and a generation's lines a chunk at a time.

use super::*;

impl Inner {
    pub(super) fn generations(
        &self,
        host: &str,
        file: &str,
    ) -> Result<Vec<GenerationInfo>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(file_prefix(host, Some(file))) {
            let (k, v) = item.map_err(unavailable)?;
            let Some((_, _, generation)) = parse_file_key(&k) else {
                return Err(StoreError::corrupt("unreadable file key"));
            };
            out.push(self.info(generation, Meta::decode(&v)?)?);
        }
        out.sort_by_key(|g| g.id);
        Ok(out)
    }

    pub(super) fn files(
        &self,
        host: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<FileInfo>, StoreError> {
        let prefix = host.map_or_else(|| vec![FILE], |h| file_prefix(h, None));
        let start = after.map_or_else(|| prefix.clone(), |(h, f)| file_prefix(h, Some(f)));
        let start = start.max(prefix.clone());
        let mut out: Vec<FileInfo> = Vec::new();
        for item in self.db.range(start..) {
            let (k, v) = item.map_err(unavailable)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((host, file, generation)) = parse_file_key(&k) else {
                return Err(StoreError::corrupt("unreadable file key"));
            };
            if after == Some((host.as_str(), file.as_str())) {
                continue;
            }
            let g = self.info(generation, Meta::decode(&v)?)?;
            let full = out.len() >= limit;
            match out.last_mut() {
                Some(f) if f.host == host && f.file == file => f.generations.push(g),
                _ if full => break,
                _ => out.push(FileInfo {
                    host,
                    file,
                    generations: vec![g],
                }),
            }
        }
        for f in &mut out {
            f.generations.sort_by_key(|g| g.id);
        }
        Ok(out)
    }

    pub(super) fn read_chunk(&self, id: u64, read: &Read) -> Result<Chunk, StoreError> {
        let (from, to) = (read.from, read.to);
        let mut chunk = Chunk {
            end: from,
            ..Chunk::default()
        };
        if from > to {
            return Ok(chunk);
        }
        let (first, last) = (from / LINES_PER_BUCKET, to / LINES_PER_BUCKET);
        for item in self.db.range(line_key(id, first)..=line_key(id, last)) {
            let (k, v) = item.map_err(unavailable)?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[9..17]);
            let base = u64::from_be_bytes(b) * LINES_PER_BUCKET;
            let value = IndexValue::decode(&v).ok_or_else(|| {
                StoreError::corrupt(format!("index at line {base} of generation {id}"))
            })?;
            if read.outside(value.first_ms, value.last_ms) {
                // Received wholly outside the window: not even read.
                chunk.skipped += 1;
                continue;
            }
            let corrupt = |e: std::io::Error| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    StoreError::corrupt_by(format!("bucket at line {base} of generation {id}"), e)
                } else {
                    io_unavailable(e)
                }
            };
            let decode = |whole: &[u8], chunk: &mut Chunk| {
                // The usual case, a bucket that fits the cursor's buffer (or in pieces):
                // decoded from the slice (the per-byte cursor path cost ~40 % of download
                // speed).
                let entries = bucket::decode(whole).ok_or_else(|| {
                    StoreError::corrupt(format!("bucket at line {base} of generation {id}"))
                })?;
                Ok::<_, StoreError>(chunk.push_bucket(base, &entries, read))
            };
            let mut cursor = match self.open_bucket(&k, &value)? {
                Opened::Cursor(c) => c,
                Opened::Merged(whole) => {
                    if decode(&whole, &mut chunk)? {
                        return Ok(chunk);
                    }
                    continue;
                }
            };
            if let Some(whole) = cursor.whole().map_err(corrupt)? {
                if decode(whole, &mut chunk)? {
                    return Ok(chunk);
                }
                continue;
            } else {
                let mut order = bucket::Order::default();
                while let Some(h) = bucket::next_header(&mut cursor).map_err(corrupt)? {
                    order.check(h.offset).map_err(corrupt)?;
                    let n = base + u64::from(h.offset);
                    if n < from || n > to {
                        cursor.skip(h.len).map_err(corrupt)?;
                        continue;
                    }
                    if !chunk.admit(n, h.partial, h.ts, read.contiguous, read.numbered) {
                        return Ok(chunk);
                    }
                    cursor.read_into(&mut chunk.data, h.len).map_err(corrupt)?;
                    if chunk.close_line(n, h.partial, read.max_bytes, to) {
                        return Ok(chunk);
                    }
                }
            }
            if read.full_after(&mut chunk, base) {
                return Ok(chunk);
            }
        }
        Ok(chunk)
    }
}
