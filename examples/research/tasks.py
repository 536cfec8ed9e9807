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
    data: list[dict[str, object]] = json.loads(
        (Path(__file__).parent / "corpus.json").read_text()
    )
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
        return ScoutReport(papers=ranked[:top_k], searched=len(papers))

    @app.task(retries=2, timeout=300)
    async def synthesis(
        ctx: Context, refine_question: RefinedQuestion, literature_scout: ScoutReport
    ) -> Report:
        """Write the report from the most relevant papers."""
        papers = literature_scout.papers
        if not papers:
            summary = f"No paper in the corpus addresses '{refine_question.focus}'."
        else:
            lead = papers[0]
            summary = (
                f"On '{refine_question.focus}', the most relevant work is '{lead.title}' "
                f"({lead.year}). {len(papers)} papers of {literature_scout.searched} "
                "were found relevant."
            )
        findings = [f"{p.title} ({p.year}): {p.abstract.split('. ')[0]}." for p in papers]
        return Report(
            title=f"Research brief: {refine_question.question}",
            audience=refine_question.audience,
            summary=summary,
            findings=findings,
            references=[f"[{p.id}] {p.title}, {p.year}" for p in papers],
        )
