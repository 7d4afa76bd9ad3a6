//! Reading the whole store once ([`Store::verify`]): the full check of an open that cannot tell
//! what changed, and of `linkpulse check`.

use fjall::{Readable, Snapshot};

use super::{Store, StoreError, records};

/// What [`Store::verify`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verified {
    pub keys: u64,
    pub links: u64,
    pub codes_clicked: u64,
    pub clicks: u64,
    /// Whether there was a totals record (it then said what was read).
    pub totals_record: bool,
}

/// The code being read, its last number, and its last record.
type Current = Option<(Vec<u8>, u64, fjall::UserValue)>;

impl Store {
    /// Reads every API key, every link (by scan and by key) and every click once, in one
    /// snapshot, so every block the service reads passes its checksum; checks that each code's
    /// clicks are numbered 1, 2, ... without a gap and that its last click record says the
    /// number its key says (then each stored count is its number of click events); and that
    /// the totals record, if there is one, says how many links and clicks it read. Takes time
    /// in proportion to the store's size. Safe while the writer writes.
    pub fn verify(&self) -> Result<Verified, StoreError> {
        let snapshot = self.db.snapshot();
        let mut seen = Verified::default();
        self.verify_keys(&snapshot, &mut seen)?;
        self.verify_links(&snapshot, &mut seen)?;
        self.verify_clicks(&snapshot, &mut seen)?;
        self.verify_totals(&snapshot, &mut seen)?;
        Ok(seen)
    }

    fn verify_keys(&self, snapshot: &Snapshot, seen: &mut Verified) -> Result<(), StoreError> {
        for guard in snapshot.iter(&self.keys) {
            let (_, value) = guard.into_inner()?;
            records::decode_key(&value)?;
            seen.keys += 1;
        }
        Ok(())
    }

    fn verify_links(&self, snapshot: &Snapshot, seen: &mut Verified) -> Result<(), StoreError> {
        for guard in snapshot.iter(&self.links) {
            let (code, value) = guard.into_inner()?;
            records::decode_link(&value)?;
            // A point read too, as a redirect does: it reads the table's filter, which a scan
            // does not.
            snapshot.get(&self.links, &code)?;
            seen.links += 1;
        }
        Ok(())
    }

    /// Every click, each code's numbered without a gap from its first (see
    /// [`Store::first_number_due`]), its last record saying the number its key says.
    fn verify_clicks(&self, snapshot: &Snapshot, seen: &mut Verified) -> Result<(), StoreError> {
        let mut current: Current = None;
        for guard in snapshot.iter(&self.clicks) {
            let (key, value) = guard.into_inner()?;
            // `code 0x00 seq(big-endian, 8 bytes)`.
            let (code, seq) = records::split_click_key(&key).ok_or_else(|| {
                StoreError::Inconsistent(format!("malformed click key {}", hex::encode(&key)))
            })?;
            let expected = match &mut current {
                Some((same, last, last_value)) if same.as_slice() == code => {
                    let expected = *last + 1;
                    *last = seq;
                    *last_value = value;
                    expected
                }
                other => {
                    if let Some((previous, last, last_value)) = other {
                        check_last(previous, *last, last_value)?;
                    }
                    *other = Some((code.to_vec(), seq, value));
                    seen.codes_clicked += 1;
                    self.first_number_due(snapshot, code, seq)?
                }
            };
            if seq != expected {
                return Err(StoreError::Inconsistent(format!(
                    "code {}: click number {seq} where number {expected} was due",
                    String::from_utf8_lossy(code)
                )));
            }
            seen.clicks += 1;
        }
        if let Some((code, last, value)) = &current {
            check_last(code, *last, value)?;
        }
        Ok(())
    }

    /// The number a code's first stored click (numbered `seq`) must have: 1, or any number
    /// right after clicks the stored aggregates cover. Clicks before the first may have
    /// expired (`--click-retention-days`), but only ones the stored aggregates cover.
    fn first_number_due(
        &self,
        snapshot: &Snapshot,
        code: &[u8],
        seq: u64,
    ) -> Result<u64, StoreError> {
        let code_text = String::from_utf8_lossy(code);
        let covers = records::decode_covers(
            snapshot
                .get(&self.stats, records::covers_key(&code_text))?
                .as_deref(),
        );
        Ok(if seq > 1 && seq <= covers + 1 { seq } else { 1 })
    }

    /// The totals record, if there is one, must say how many links and clicks were read.
    fn verify_totals(&self, snapshot: &Snapshot, seen: &mut Verified) -> Result<(), StoreError> {
        if let Some(totals) = snapshot.get(&self.meta, records::TOTALS_KEY)? {
            let totals = records::decode_totals(&totals)?;
            if (totals.links, totals.clicks) != (seen.links, seen.clicks) {
                return Err(StoreError::Inconsistent(format!(
                    "the totals record says {} links and {} clicks, but {} links and {} \
                     clicks are stored",
                    totals.links, totals.clicks, seen.links, seen.clicks
                )));
            }
            seen.totals_record = true;
        }
        Ok(())
    }
}

/// A code's last click record must say the number its key says.
fn check_last(code: &[u8], seq: u64, value: &[u8]) -> Result<(), StoreError> {
    let last = records::decode_click(value)?;
    if last.seq == seq {
        return Ok(());
    }
    Err(StoreError::Inconsistent(format!(
        "code {}: click stored under number {seq} says it is number {}",
        String::from_utf8_lossy(code),
        last.seq
    )))
}
