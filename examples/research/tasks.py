"""Research pipeline tasks. They run offline: the literature corpus ships with the example.

``refine_question`` asks a clarification when the question is too vague to search;
``literature_scout`` ranks the corpus by relevance; ``synthesis`` writes the report.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from conveyor import Context, Conveyor
from conveyor.domain.questions import Question

_WORD = re.compile(r"[a-z][a-z-]+")
_STOP = frozenset(
    "a an and are as at be by can do does for from how in into is it of on or should that "
    "the their this to was what when which who why will with".split()
)


class RefinedQuestion(BaseModel):
    question: str
    focus: str
    audience: str
    keywords: list[str]


class Paper(BaseModel):
    id: str
    title: str
    year: int
    score: float
    abstract: str


class ScoutReport(BaseModel):
    papers: list[Paper]
    searched: int
    summary: str


class Report(BaseModel):
    title: str
    audience: str
    summary: str
    findings: list[str]
    references: list[str]


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


@cache
def corpus() -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads((Path(__file__).parent / "corpus.json").read_text())
    return data


def register(app: Conveyor) -> None:
    @app.task(retries=2, timeout=120)
    async def refine_question(
        ctx: Context, question: str, focus: str | None = None, audience: str | None = None
    ) -> RefinedQuestion:
        """Turn a question into keywords; ask the user when it is too vague."""
        if focus is None and len(words(question)) < 4:
            answers = await ctx.ask(
                [
                    Question(
                        "focus",
                        f"'{question}' is broad. Which aspect should the research focus on?",
                        {"type": "string", "minLength": 3, "maxLength": 200},
                    ),
                    Question(
                        "audience",
                        "Who will read the report?",
                        {"type": "string", "enum": ["general", "expert"]},
                        default="general",
                    ),
                ]
            )
            focus, audience = answers["focus"], answers["audience"]
        focus = focus or question
        keywords = list(dict.fromkeys(words(f"{question} {focus}")))
        ctx.progress(100, f"{len(keywords)} keywords")
        return RefinedQuestion(
            question=question, focus=focus, audience=audience or "general", keywords=keywords
        )

    @app.task(retries=2, timeout=300)
    async def literature_scout(
        ctx: Context, refine_question: RefinedQuestion, top_k: int = 5
    ) -> ScoutReport:
        """Rank the corpus by TF-IDF overlap with the question's keywords."""
        papers = corpus()
        documents = [Counter(words(f"{p['title']} {p['abstract']}")) for p in papers]
        frequency = Counter(w for doc in documents for w in doc)
        ranked: list[Paper] = []
        for index, (paper, doc) in enumerate(zip(papers, documents, strict=True)):
            score = sum(
                doc[k] * math.log((1 + len(papers)) / (1 + frequency[k]))
                for k in refine_question.keywords
            )
            if score > 0:
                ranked.append(
                    Paper(
                        id=str(paper["id"]),
                        title=str(paper["title"]),
                        year=int(str(paper["year"])),
                        score=round(score, 3),
                        abstract=str(paper["abstract"]),
                    )
                )
            if index % 5 == 4:
                ctx.progress(100 * (index + 1) / len(papers), f"read {index + 1} abstracts")
        ranked.sort(key=lambda p: (-p.score, -p.year))
        best = ranked[:top_k]
        summary = ""
        if best:
            # the expensive part: a retried step gets it back from its memo
            summary = await ctx.memo(
                "summary",
                lambda: _summarise(ctx, refine_question, best),
            )
        return ScoutReport(papers=best, searched=len(papers), summary=summary)

    @app.task(retries=2, timeout=300)
    async def synthesis(
        ctx: Context, refine_question: RefinedQuestion, literature_scout: ScoutReport
    ) -> Report:
        """Write the report from the most relevant papers and save it as a versioned
        ``report`` document (a re-run of the research adds a version)."""
        papers = literature_scout.papers
        if not papers:
            summary = f"No paper in the corpus addresses '{refine_question.focus}'."
        else:
            lead = papers[0]
            summary = (
                f"On '{refine_question.focus}', the most relevant work is '{lead.title}' "
                f"({lead.year}). {len(papers)} papers of {literature_scout.searched} "
                f"were found relevant. {literature_scout.summary}"
            ).strip()
        findings = [f"{p.title} ({p.year}): {p.abstract.split('. ')[0]}." for p in papers]
        report = Report(
            title=f"Research brief: {refine_question.question}",
            audience=refine_question.audience,
            summary=summary,
            findings=findings,
            references=[f"[{p.id}] {p.title}, {p.year}" for p in papers],
        )
        await ctx.save_document(
            "report",
            report.title,
            _markdown(report),
            scope_type="research-question",
            scope_id=refine_question.question[:200],
        )
        ctx.progress(100, "report saved")
        return report


async def _summarise(ctx: Context, question: RefinedQuestion, papers: list[Paper]) -> str:
    abstracts = "\n".join(f"{p.title}. {p.abstract}" for p in papers)
    completion = await ctx.llm.complete(
        f"Summarise what these papers say about {question.focus!r}, one line each:\n{abstracts}",
        system="You are a careful research assistant. Be brief and factual.",
        max_tokens=200,
    )
    return completion.text


def _markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", f"*Audience: {report.audience}*", "", report.summary, ""]
    lines += ["## Findings", ""] + [f"- {f}" for f in report.findings]
    lines += ["", "## References", ""] + [f"- {r}" for r in report.references]
    return "\n".join(lines) + "\n"
