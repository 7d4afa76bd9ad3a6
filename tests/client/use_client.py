"""Uses linkpulse through a client generated from its /api/openapi.json by openapi-python-client
(tests/integration/openapi.rs generates it, then runs this with BASE, KEY and CLIENT_DIR set):
creates a link, follows it, and reads it and its stats, as another program would. Prints
`ok` and exits 0 when every answer is what the API documents."""

import os
import sys

import httpx

sys.path.insert(0, os.environ["CLIENT_DIR"])

from linkpulse_client import AuthenticatedClient  # noqa: E402
from linkpulse_client.api.links import create_link, get_link, get_link_stats, list_links  # noqa: E402
from linkpulse_client.models import Link, LinkFields, LinkPage, StatsAnswer  # noqa: E402

base, key = os.environ["BASE"], os.environ["KEY"]
client = AuthenticatedClient(base_url=base, token=key)

made = create_link.sync(client=client, body=LinkFields(url="https://example.com/generated", code="generated"))
assert isinstance(made, Link), made
assert made.code == "generated" and made.click_count == 0, made

# Following the short link: a plain HTTP client, as a browser would.
followed = httpx.get(made.short_url, follow_redirects=False)
assert followed.status_code == 302, followed.status_code
assert followed.headers["location"] == "https://example.com/generated", followed.headers

read = get_link.sync("generated", client=client)
assert isinstance(read, Link) and read.click_count == 1, read
stats = get_link_stats.sync("generated", client=client, interval="hour")
assert isinstance(stats, StatsAnswer) and stats.totals.clicks == 1, stats
page = list_links.sync(client=client, limit=10)
assert isinstance(page, LinkPage) and [l.code for l in page.links] == ["generated"], page
missing = get_link.sync_detailed("nothing-here", client=client)
assert missing.status_code == 404, missing.status_code
print("ok")
