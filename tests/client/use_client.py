"""Uses linkpulse through a client generated from its /api/openapi.json by openapi-python-client
(tests/integration/openapi.rs generates it, then runs this with BASE, KEY and CLIENT_DIR set):
creates a link, follows it, reads it and its stats, and makes and reads a webhook, as another
program would. Prints
`ok` and exits 0 when every answer is what the API documents."""

import os
import sys

import httpx

sys.path.insert(0, os.environ["CLIENT_DIR"])

from linkpulse_client import AuthenticatedClient  # noqa: E402
from linkpulse_client.api.links import create_link, get_link, get_link_stats, list_links  # noqa: E402
from linkpulse_client.api.webhooks import create_webhook, list_webhook_deliveries, list_webhooks  # noqa: E402
from linkpulse_client.models import (  # noqa: E402
    CreateWebhookRequest,
    Link,
    LinkFields,
    LinkPage,
    StatsAnswer,
    WebhookDeliveries,
    WebhookList,
    WebhookWithSecret,
)

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

# A webhook for the link's clicks (a public address; nothing here answers it), read back.
hook = create_webhook.sync(
    client=client,
    body=CreateWebhookRequest(url="https://93.184.215.14/hook", events=["link.clicked"], links=["generated"]),
)
assert isinstance(hook, WebhookWithSecret), hook
assert hook.secret.startswith("whsec_") and hook.links == ["generated"], hook
hooks = list_webhooks.sync(client=client)
assert isinstance(hooks, WebhookList) and [h.id for h in hooks.webhooks] == [hook.id], hooks
deliveries = list_webhook_deliveries.sync(hook.id, client=client)
assert isinstance(deliveries, WebhookDeliveries) and deliveries.delivered_clicks == 0, deliveries
refused = create_webhook.sync_detailed(client=client, body=CreateWebhookRequest(url="http://127.0.0.1/hook"))
assert refused.status_code == 400, refused.status_code
print("ok")
