//! The bot list kept in `bots.txt` (its sources are named there), matched in one pass with
//! Aho-Corasick, ASCII case-insensitively.

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

static LIST: &str = include_str!("bots.txt");

static MATCHER: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
    let words = LIST
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(words)
        .ok()
});

/// Whether the user agent names a crawler, a script or a link-preview fetcher.
pub fn listed(user_agent: &str) -> bool {
    MATCHER
        .as_ref()
        .is_some_and(|matcher| matcher.is_match(user_agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_builds_and_names_preview_fetchers_and_scripts() {
        assert!(MATCHER.is_some());
        for agent in [
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "Twitterbot/1.0",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            "WhatsApp/2.23.20.0 A",
            "TelegramBot (like TwitterBot)",
            "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
            "http.rb/5.1.1 (Mastodon/4.1.2; +https://mastodon.social/)",
            "curl/8.5.0",
            "python-requests/2.31.0",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
        ] {
            assert!(listed(agent), "{agent}");
        }
        for agent in [
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
        ] {
            assert!(!listed(agent), "{agent}");
        }
    }
}
