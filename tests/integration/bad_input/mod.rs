//! Every bad input is answered, and none lets anything in: each test sends one group of bad
//! requests, checks the status and the `{"error": ...}` message (where the API answers JSON),
//! and then that nothing stored changed (no link created, no click counted, no subscriber
//! left). Requests that reqwest will not send (raw bytes in paths, huge heads) go over a raw
//! TCP connection.
//!
//! One file per kind of input: `json` (create bodies), `urls` (redirect targets), `codes`
//! (short codes in bodies and paths), `heads` (request heads and their headers), `rates`
//! (creation rates); `raw` holds the helpers they share.

mod codes;
mod heads;
mod json;
mod rates;
mod raw;
mod urls;
