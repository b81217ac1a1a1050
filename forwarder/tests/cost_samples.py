"""Realistic, full-size events for the forwarder's cost benchmark (``test_cost.py``).

The samples in ``samples.py`` are tiny on purpose; these are as big as what Zulip 10/11 hands
``send_event`` for an ordinary channel message (a wide ``message_dict`` with ~1.5 KB of
Markdown and its rendering, the notification lists, two dozen recipients) and for a message
to a channel of 10,000 subscribers (the same message; 10,000 per-user dicts, and the
notification lists Zulip fills for a big channel: idle users, push devices, bots).
"""

from __future__ import annotations

import copy
from typing import Any

from samples import NOTIFICATION_LISTS

#: About 1.4 KB of Markdown, the kind of message a team writes: a list, a link, code.
CONTENT = (
    "Hi @**Iago**, quick status on the release:\n\n"
    "* the migration ran on staging in 4 min; the index build took most of it\n"
    "* the **nightly** job failed twice on `test_export` (flaky, see #**backend>export flake**)\n"
    "* docs: https://zulip.readthedocs.io/en/latest/production/upgrade.html#upgrading-"
    "from-a-git-repository\n\n"
    "```python\n"
    "def retry(func, attempts=3):\n"
    "    for attempt in range(attempts):\n"
    "        try:\n"
    "            return func()\n"
    "        except TimeoutError:\n"
    "            time.sleep(2 ** attempt)\n"
    "```\n\n"
    "Can someone review the backport PR before Thursday? It touches the message "
    "rendering cache, so I would like a second pair of eyes on the invalidation logic. "
    "I also left a few questions on the thread about the upgrade notes; nothing blocking. "
    ":thumbs_up: to whoever fixed the CI cache, builds are twice as fast now."
)

RENDERED = (
    '<p>Hi <span class="user-mention" data-user-id="8">@Iago</span>, quick status on the '
    "release:</p>\n<ul>\n<li>the migration ran on staging in 4 min; the index build took "
    "most of it</li>\n<li>the <strong>nightly</strong> job failed twice on "
    '<code>test_export</code> (flaky, see <a class="stream-topic" data-stream-id="12" '
    'href="/#narrow/channel/12-backend/topic/export.20flake">#backend &gt; export flake</a>)'
    '</li>\n<li>docs: <a href="https://zulip.readthedocs.io/en/latest/production/upgrade.html'
    '#upgrading-from-a-git-repository">https://zulip.readthedocs.io/en/latest/production/'
    "upgrade.html#upgrading-from-a-git-repository</a></li>\n</ul>\n"
    '<div class="codehilite" data-code-language="Python"><pre><span></span><code>'
    '<span class="k">def</span> <span class="nf">retry</span><span class="p">(</span>'
    'func<span class="p">,</span> attempts<span class="o">=</span><span class="mi">3</span>'
    '<span class="p">):</span>\n    <span class="k">for</span> attempt <span class="ow">in'
    '</span> <span class="nb">range</span><span class="p">(</span>attempts<span class="p">)'
    ':</span>\n        <span class="k">try</span><span class="p">:</span>\n            '
    '<span class="k">return</span> func<span class="p">()</span>\n        <span class="k">'
    'except</span> <span class="ne">TimeoutError</span><span class="p">:</span>\n'
    '            time<span class="o">.</span>sleep<span class="p">(</span><span class="mi">'
    '2</span> <span class="o">**</span> attempt<span class="p">)</span>\n</code></pre></div>'
    "\n<p>Can someone review the backport PR before Thursday? It touches the message "
    "rendering cache, so I would like a second pair of eyes on the invalidation logic. "
    "I also left a few questions on the thread about the upgrade notes; nothing blocking. "
    '<span aria-label="thumbs up" class="emoji emoji-1f44d" role="img" title="thumbs up">'
    ":thumbs_up:</span> to whoever fixed the CI cache, builds are twice as fast now.</p>"
)

MESSAGE_DICT: dict[str, Any] = {
    "id": 48213,
    "sender_id": 31,
    "content": CONTENT,
    "rendered_content": RENDERED,
    "rendered_content_version": 1,
    "recipient_type_id": 12,
    "recipient_type": 2,
    "recipient_id": 57,
    "sender_recipient_id": 140,
    "timestamp": 1733760000,
    "client": "website",
    "subject": "release 11.2",
    "topic_links": [],
    "sender_realm_id": 2,
    "is_me_message": False,
    "reactions": [],
    "submessages": [],
    "edit_history": None,
    "last_edit_timestamp": None,
    "last_moved_timestamp": None,
    "sender_full_name": "Hamlet of Denmark",
    "sender_email": "user31@acme.example.com",
    "sender_delivery_email": "hamlet@example.com",
    "sender_realm_str": "acme",
    "sender_avatar_source": "G",
    "sender_avatar_version": 3,
    "sender_is_mirror_dummy": False,
    "sender_email_address_visibility": 5,
    "display_recipient": "backend",
    "type": "stream",
    "stream_id": 12,
}


def big_message_event(recipients: int) -> dict[str, Any]:
    """A channel message as ``do_send_messages`` hands it to ``send_event`` for ``recipients``
    subscribers (about a tenth idle, a third with push devices, a few bots)."""
    ids = list(range(100, 100 + recipients))
    event: dict[str, Any] = {
        "type": "message",
        "message": MESSAGE_DICT["id"],
        "message_dict": copy.deepcopy(MESSAGE_DICT),
        **{key: [] for key in NOTIFICATION_LISTS},
        "presence_idle_user_ids": ids[::10],
        "muted_sender_user_ids": [],
        "all_bot_user_ids": ids[::500],
        "push_device_registered_user_ids": ids[::3],
        "disable_external_notifications": False,
        "realm_host": "acme.example.com",
        "realm_id": 2,
        "stream_name": "backend",
    }
    event["stream_push_user_ids"] = ids[::40]
    event["stream_email_user_ids"] = ids[::60]
    return event


def big_message_users(recipients: int, sender_id: int = 31) -> list[dict[str, Any]]:
    """``users`` for that message: one dict per recipient, the sender's with ``read``."""
    users = [
        {"id": uid, "flags": [], "mentioned_user_group_id": None}
        for uid in range(100, 100 + recipients)
    ]
    users.append({"id": sender_id, "flags": ["read"], "mentioned_user_group_id": None})
    return users


#: An ordinary channel message: two dozen subscribers.
ORDINARY_RECIPIENTS = 24
#: A message to a big channel, as in the security review (F3).
LARGE_RECIPIENTS = 10_000
