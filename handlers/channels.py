"""Customer-contact changes (`change_external_contact`): adds through channel QR codes, edits, deletions."""

from __future__ import annotations

from bot.contact_changes import contact_added, contact_deleted, contact_edited
from bot.context import Context
from bot.router import ContactChange, Router
from bot.wecom.inbound import Inbound

router = Router("channels")


@router.on(ContactChange("add_external_contact", "add_half_external_contact"))
async def on_contact_added(msg: Inbound, ctx: Context) -> None:
    """A customer added a rep: attributes them to the channel named by `State`, makes the rep the owner
    if there is none, stores the WeCom profile and records `contact_added`. Sends the channel's welcome
    (text + tracked link to its starter item) with `send_welcome_msg` when a WelcomeCode came along."""
    await contact_added(ctx, msg)


@router.on(ContactChange("edit_external_contact"))
async def on_contact_edited(msg: Inbound, ctx: Context) -> None:
    """The rep edited the customer's remark, description, company or mobile numbers: the profile is read
    again shortly after (bot/profiles.py), so a mobile number noted now merges the gate-form lead who
    left it."""
    await contact_edited(ctx, msg)


@router.on(ContactChange("del_external_contact"))
async def on_rep_deleted_contact(msg: Inbound, ctx: Context) -> None:
    """The rep deleted the customer: records `contact_deleted` {by: rep}; tells the owning rep (app text).
    Transfers to another rep (Source DELETE_BY_TRANSFER) are not deletions and send nothing."""
    await contact_deleted(ctx, msg, by="rep")


@router.on(ContactChange("del_follow_user"))
async def on_customer_deleted_rep(msg: Inbound, ctx: Context) -> None:
    """The customer deleted the rep: records `contact_deleted` {by: customer}; tells the owning rep."""
    await contact_deleted(ctx, msg, by="customer")
