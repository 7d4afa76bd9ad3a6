//! User-agent classification with `woothee` (a small, dependency-light, table-driven parser),
//! and the bot flag: woothee's crawlers, the list in `bots.txt`, or no user agent at all.

use crate::domain::DeviceClass;

/// What a user agent says about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub browser: String,
    pub os: String,
    pub device: DeviceClass,
    pub bot: bool,
}

/// How many distinct user agents keep their classification in memory. Real traffic repeats a
/// few hundred agents; parsing one costs microseconds (regular expressions), a hit nanoseconds.
const CACHE_CAPACITY: usize = 4096;

/// Classifies user agents, remembering recent answers.
pub struct AgentParser {
    inner: woothee::parser::Parser,
    cache: quick_cache::sync::Cache<String, Agent>,
}

impl Default for AgentParser {
    fn default() -> Self {
        Self {
            inner: woothee::parser::Parser::new(),
            cache: quick_cache::sync::Cache::new(CACHE_CAPACITY),
        }
    }
}

impl AgentParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn classify(&self, user_agent: &str) -> Agent {
        if let Some(known) = self.cache.get(user_agent) {
            return known;
        }
        let agent = self.parse(user_agent);
        self.cache.insert(user_agent.to_owned(), agent.clone());
        agent
    }

    fn parse(&self, user_agent: &str) -> Agent {
        if user_agent.trim().is_empty() {
            // Browsers always send a user agent; scripts often do not.
            return Agent {
                browser: "unknown".into(),
                os: "unknown".into(),
                device: DeviceClass::Bot,
                bot: true,
            };
        }
        let listed = super::bots::listed(user_agent);
        let Some(found) = self.inner.parse(user_agent) else {
            return Agent {
                browser: "unknown".into(),
                os: "unknown".into(),
                device: if listed {
                    DeviceClass::Bot
                } else {
                    DeviceClass::Other
                },
                bot: listed,
            };
        };
        let bot = found.category == "crawler" || listed;
        let device = match found.category {
            _ if bot => DeviceClass::Bot,
            "pc" => DeviceClass::Desktop,
            "smartphone" | "mobilephone" => {
                if found.os == "iPad" || user_agent.contains("Tablet") {
                    DeviceClass::Tablet
                } else if found.os == "Android" && !user_agent.contains("Mobile") {
                    // Android tablets leave "Mobile" out of their user agent.
                    DeviceClass::Tablet
                } else {
                    DeviceClass::Mobile
                }
            }
            _ => DeviceClass::Other,
        };
        Agent {
            browser: found.name.to_owned(),
            os: found.os.to_owned(),
            device,
            bot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_common_agents() {
        let parser = AgentParser::new();
        let desktop = parser.classify(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        );
        assert_eq!(desktop.browser, "Chrome");
        assert_eq!(desktop.os, "Linux");
        assert_eq!(desktop.device, DeviceClass::Desktop);
        assert!(!desktop.bot);

        let phone = parser.classify(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
        );
        assert_eq!(phone.device, DeviceClass::Mobile);
        assert_eq!(phone.browser, "Safari");

        let tablet = parser.classify(
            "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
        );
        assert_eq!(tablet.device, DeviceClass::Tablet);

        let bot = parser
            .classify("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)");
        assert!(bot.bot);
        assert_eq!(bot.device, DeviceClass::Bot);

        assert!(parser.classify("").bot, "no user agent at all is a script");
        let preview = parser.classify("WhatsApp/2.23.20.0 A");
        assert!(preview.bot, "a link-preview fetcher woothee does not know");
        assert_eq!(preview.device, DeviceClass::Bot);
    }
}
