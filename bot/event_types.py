"""The behavior event types Beacon knows: the one list every part of the product checks against."""

from __future__ import annotations

EVENT_TYPES: tuple[str, ...] = (
    "open",  # a tracked link opened (landing page shown)
    "read",  # read depth reached: props.depth in 25/50/75/100
    "dwell",  # visible time on page: props.seconds
    "download",  # attachment downloaded
    "cta",  # call-to-action clicked: props.cta = demo | contact
    "form_submit",  # gate form submitted
    "forward",  # the contact's link was opened by someone new (props.to_visitor)
    "menu_click",  # WeChat Customer Service menu item picked
    "message",  # inbound chat message from the contact
    "contact_added",  # the contact added a rep
    "contact_deleted",  # the contact deleted the rep, or the rep the contact
    "demo_request",  # booked a demo (offline or via CTA)
    "webinar_attended",
    "call",  # a call logged by a rep or a CRM
    "payment",  # a payment (offline import); drives dormancy
    "unsubscribe",
)
EVENT_TYPE_SET = frozenset(EVENT_TYPES)


class UnknownEventType(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown event type {name!r}; known: {', '.join(EVENT_TYPES)}")
        self.name = name


def check_event_type(name: str) -> str:
    if name not in EVENT_TYPE_SET:
        raise UnknownEventType(name)
    return name
