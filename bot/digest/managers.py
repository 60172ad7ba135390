"""The managers' digest as WeCom markdown: one section per question a manager asks in the morning."""

from __future__ import annotations

from bot.digest.team import TeamDigest
from bot.digest.window import DigestWindow, md_text, weekday_label
from bot.lifecycle import STAGE_LABELS


def _stage(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage)


def render_team(digest: TeamDigest, window: DigestWindow, public_url: str, sla_hours: float) -> str:
    day = window.report_day
    lines = [
        f"**团队日报 · {day.month}月{day.day}日 {weekday_label(day)}**",
        f"{md_text(digest.name)}，以下是你团队（{len(digest.reps)} 人）昨天的情况：",
        "**SOP 任务**（到期 / 完成 / 逾期）",
    ]
    for rep in digest.reps:
        overdue = f"<font color=\"warning\">{rep.overdue}</font>" if rep.overdue else "0"
        lines.append(f"> {md_text(rep.name)}：{rep.due} / {rep.done} / {overdue}")
    channels = " · ".join(f"{md_text(name)} {n}" for name, n in digest.by_channel)
    lines.append(f"**新增客户 {digest.new_contacts}**" + (f"：{channels}" if channels else ""))
    lines.append(f"**新增 MQL {digest.new_mqls}**")
    missed = sum(digest.sla_missed.values())
    detail = " · ".join(f"{md_text(name)} {n}" for name, n in sorted(digest.sla_missed.items(), key=lambda p: (-p[1], p[0])))
    color = "warning" if missed else "info"
    lines.append(f"**热线索超时未跟进 <font color=\"{color}\">{missed}</font>**（超过 {sla_hours:g} 小时）" + (f"：{detail}" if detail else ""))
    moves = " · ".join(f"{_stage(a)}→{_stage(b)} {n}" for a, b, n in digest.moves)
    lines.append(f"**阶段变化**：{moves or '无'}")
    lines.append("**互动最多的内容**")
    lines += [f"{n}. {md_text(title)}（{events} 次互动，{people} 人）" for n, (title, events, people) in enumerate(digest.top_engaged, 1)] or ["> 暂无"]
    lines.append("**推动阶段的内容**")
    lines += [f"{n}. {md_text(title)}（{count} 人进阶）" for n, (title, count) in enumerate(digest.top_advancing, 1)] or ["> 暂无"]
    lines.append(f"[打开数据看板]({public_url}/dashboard)")
    return "\n".join(lines)


def summary(digest: TeamDigest) -> dict[str, object]:
    """The numbers kept in the `digests` row (what was reported, for audits and the dashboard)."""
    return {
        "reps": {r.userid: {"due": r.due, "done": r.done, "overdue": r.overdue} for r in digest.reps},
        "new_contacts": digest.new_contacts,
        "by_channel": dict(digest.by_channel),
        "new_mqls": digest.new_mqls,
        "sla_missed": digest.sla_missed,
        "moves": [list(m) for m in digest.moves],
        "top_engaged": [list(t) for t in digest.top_engaged],
        "top_advancing": [list(t) for t in digest.top_advancing],
        "funnel": digest.funnel,
    }
