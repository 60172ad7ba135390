"""The managers' chart: the team's funnel (contacts by stage) beside a 7-day trend of new contacts and
new MQLs, as a PNG (matplotlib, Agg backend: no display needed).

`draw_charts` draws a run's charts in a child process: matplotlib holds the GIL for about a second per
chart, which in a thread of the server would stall link opens and callbacks for that long. The child
runs at the lowest CPU priority (`background_priority`): on a busy core it would otherwise take half
of the server's CPU time, and a write transaction in progress would hold SQLite's lock twice as long.

Labels are Chinese when a CJK font is installed (Noto Sans CJK, WenQuanYi, Source Han, SimHei …),
and English otherwise: a font without the glyphs would draw empty boxes.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import SpawnContext, SpawnProcess
from functools import lru_cache

from bot.digest.team import FUNNEL_STAGES, TeamDigest
from bot.priority import background_priority

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC")
LABELS = {
    "zh": {"new": "新线索", "nurturing": "可培养", "mql": "MQL", "sql": "有意向", "customer": "已合作",
           "funnel": "团队漏斗（当前）", "trend": "近 7 天", "new_contacts": "新增客户", "new_mqls": "新增 MQL",
           "contacts": "客户数"},
    "en": {"new": "New", "nurturing": "Nurturing", "mql": "MQL", "sql": "SQL", "customer": "Customer",
           "funnel": "Team funnel (now)", "trend": "Last 7 days", "new_contacts": "New contacts", "new_mqls": "New MQLs",
           "contacts": "Contacts"},
}  # fmt: skip
_LOCK = threading.Lock()  # pyplot's state is global; digests may be drawn from several threads


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The first installed CJK font family, or None."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def render_chart(digest: TeamDigest, title: str) -> bytes:
    """PNG bytes of the team's chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = cjk_font()
    text = LABELS["zh" if font else "en"]
    with _LOCK, matplotlib.rc_context({"font.family": [font] if font else ["DejaVu Sans"], "axes.unicode_minus": False}):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
        try:
            stages = list(FUNNEL_STAGES)
            counts = [digest.funnel.get(stage, 0) for stage in stages]
            bars = left.barh([text[s] for s in stages][::-1], counts[::-1], color="#3478f6")
            left.bar_label(bars, padding=2, fontsize=8)
            left.set_title(text["funnel"], fontsize=10)
            left.set_xlabel(text["contacts"], fontsize=8)
            days = [f"{d.month}/{d.day}" for d, _, _ in digest.trend]
            right.plot(days, [n for _, n, _ in digest.trend], marker="o", label=text["new_contacts"], color="#3478f6")
            right.plot(days, [m for _, _, m in digest.trend], marker="s", label=text["new_mqls"], color="#f28b30")
            right.set_title(text["trend"], fontsize=10)
            right.yaxis.get_major_locator().set_params(integer=True)
            right.legend(fontsize=8)
            right.tick_params(labelsize=8)
            fig.suptitle(title if font else "Team digest", fontsize=11)
            fig.tight_layout()
            out = io.BytesIO()
            fig.savefig(out, format="png")
        finally:
            plt.close(fig)
    return out.getvalue()


def render_charts(jobs: list[tuple[TeamDigest, str]]) -> list[bytes]:
    """PNG bytes of several charts (run in the child process)."""
    return [render_chart(digest, title) for digest, title in jobs]


class _BackgroundProcess(SpawnProcess):
    # Lowered as soon as it exists: a spawned child spends its first second importing (this
    # program's main module among others) before any initializer of the pool would run.
    def start(self) -> None:
        super().start()
        if self.pid is not None:
            background_priority(self.pid)


class _BackgroundContext(SpawnContext):
    Process = _BackgroundProcess  # type: ignore[assignment]


def chart_pool() -> ProcessPoolExecutor:
    """A pool of one fresh child process ("spawn": nothing of this process's threads or connections is
    inherited) at background priority, which exits if this process dies first."""
    return ProcessPoolExecutor(max_workers=1, mp_context=_BackgroundContext(), initializer=_exit_with_parent,
                               initargs=(os.getpid(),))


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """In the chart process: exit once the process that started it is gone (a `serve` worker killed
    mid-digest, say). Otherwise it waits for work forever: it holds both ends of its own call queue's
    pipe, so the parent's death closes nothing it reads, and each such orphan kept ~120 MB."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


async def draw_charts(jobs: list[tuple[TeamDigest, str]]) -> list[bytes]:
    """`render_charts` in a `chart_pool` process, awaited without blocking the event loop."""
    if not jobs:
        return []
    pool = chart_pool()
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, render_charts, jobs)
    finally:
        pool.shutdown(wait=False)

