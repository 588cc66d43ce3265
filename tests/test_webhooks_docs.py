"""docs/webhooks.md lists exactly the event types of core/event_vocabulary.py."""
import re
from pathlib import Path

from core import event_vocabulary

ROOT = Path(__file__).resolve().parent.parent


def test_webhooks_doc_lists_every_event_type_once():
    doc = (ROOT / "docs" / "webhooks.md").read_text()
    table = doc[doc.index("<!-- event-types:start -->"):doc.index("<!-- event-types:end -->")]
    listed = re.findall(r"^\| `([a-z_.]+)` \|", table, re.M)

    assert listed == list(event_vocabulary.EVENT_TYPES)


def test_event_vocabulary_emitted_types_are_known():
    assert set(event_vocabulary.EMITTED) <= set(event_vocabulary.EVENT_TYPES)
    assert set(event_vocabulary.OF_SES_EVENT.values()) <= set(event_vocabulary.EMITTED)
