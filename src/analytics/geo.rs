//! Country of a client address from a country `.mmdb` file (`--geoip-db`): MaxMind GeoLite2 or
//! GeoIP2 Country, DB-IP lite country, or the `country_code` files of `@ip-location-db`. Looked
//! up before the address is anonymised; only the country is kept.

use std::{net::IpAddr, path::Path};

use serde::Deserialize;

/// Why a country database could not be used.
#[derive(Debug, thiserror::Error)]
#[error("country database {path}: {cause}")]
pub struct GeoError {
    path: String,
    cause: String,
}

/// An open country database, held in memory.
pub struct CountryDb {
    reader: maxminddb::Reader<Vec<u8>>,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Country<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

impl CountryDb {
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let fail = |cause: String| GeoError {
            path: path.display().to_string(),
            cause,
        };
        let reader = maxminddb::Reader::open_readfile(path).map_err(|e| fail(e.to_string()))?;
        let kind = &reader.metadata().database_type;
        if !kind.to_ascii_lowercase().contains("country") {
            return Err(fail(format!(
                "its type is {kind:?}; a country database is needed (GeoLite2-Country, \
                 dbip-country-lite, geolite2-country)"
            )));
        }
        Ok(Self { reader })
    }

    /// The ISO 3166 alpha-2 code of the address's country, if the database has one.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let found = self.reader.lookup(ip).ok()?;
        let record: Record<'_> = found.decode().ok()??;
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.country_code)?;
        (code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| code.to_ascii_uppercase())
    }
}
