"""Recipe quality: a fixed set of translations, factual questions and naming requests against any
deployment, scored with the demo's rules (dsagent/clients/grading.py), one table per run.

Run: python benchmarks/recipes_eval.py [--model NAME] [--sampling greedy|server] [--json FILE]
Uses the named (or only) running deployment, or starts the embedded default. ``--sampling
greedy`` (default) makes runs repeatable; ``server`` uses the deployment's own defaults.

Compare models or prompts by running it against each: the set and the rules stay the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dsagent  # noqa: E402
from dsagent.clients import recipes  # noqa: E402
from dsagent.clients.grading import check_fact, check_names, check_translation  # noqa: E402

# English -> French, each with the translations accepted as right (short, everyday sentences)
TRANSLATIONS: list[tuple[str, list[str]]] = [
    ("Thank you.", ["Merci.", "Je vous remercie.", "Je te remercie."]),
    ("Hello.", ["Bonjour.", "Salut."]),
    ("Good night.", ["Bonne nuit."]),
    ("Yes.", ["Oui."]),
    ("Good morning.", ["Bonjour."]),
    ("See you tomorrow.", ["À demain."]),
    ("I love programming.", ["J'aime programmer.", "J'adore programmer.", "J'aime la programmation.",
                             "J'adore la programmation."]),
    ("The cat is black.", ["Le chat est noir."]),
    ("I am hungry.", ["J'ai faim."]),
    ("Where is the station?", ["Où est la gare ?", "Où est la gare?", "Où se trouve la gare ?"]),
    ("I like apples.", ["J'aime les pommes."]),
    ("The house is big.", ["La maison est grande."]),
    ("It is raining.", ["Il pleut."]),
    ("I have two brothers.", ["J'ai deux frères."]),
    ("The water is cold.", ["L'eau est froide."]),
    ("We are friends.", ["Nous sommes amis.", "Nous sommes des amis.", "On est amis."]),
    ("She reads a book.", ["Elle lit un livre."]),
    ("My name is Paul.", ["Je m'appelle Paul.", "Mon nom est Paul."]),
    ("The sky is blue.", ["Le ciel est bleu."]),
    ("I speak French.", ["Je parle français."]),
    ("How are you?", ["Comment allez-vous ?", "Comment vas-tu ?", "Comment ça va ?", "Ça va ?"]),
    ("The door is open.", ["La porte est ouverte."]),
    ("I drink coffee.", ["Je bois du café."]),
    ("The dog sleeps.", ["Le chien dort."]),
    ("Today is Monday.", ["Aujourd'hui, c'est lundi.", "Aujourd'hui c'est lundi.", "Nous sommes lundi.",
                          "Aujourd'hui est lundi."]),
    ("I am tired.", ["Je suis fatigué.", "Je suis fatiguée."]),
    ("The car is red.", ["La voiture est rouge."]),
    ("Close the window.", ["Ferme la fenêtre.", "Fermez la fenêtre."]),
    ("I live in Paris.", ["J'habite à Paris.", "Je vis à Paris."]),
    ("The children are playing.", ["Les enfants jouent."]),
]

# questions with the words a right answer names
FACTS: list[tuple[str, list[str]]] = [
    ("What is the capital of France?", ["Paris"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("What is the capital of Italy?", ["Rome"]),
    ("What is the capital of Germany?", ["Berlin"]),
    ("What is the capital of Spain?", ["Madrid"]),
    ("What is the capital of Egypt?", ["Cairo"]),
    ("What is the capital of Canada?", ["Ottawa"]),
    ("What is the capital of Australia?", ["Canberra"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("What is the largest planet in the solar system?", ["Jupiter"]),
    ("What gas do plants take in from the air to make food?", ["carbon dioxide"]),
    ("What is the chemical symbol for water?", ["H2O"]),
    ("How many days are there in a week?", ["seven"]),
    ("Who wrote 'Romeo and Juliet'?", ["Shakespeare"]),
    ("What is the freezing point of water in degrees Celsius?", ["0"]),
]

NAMING: list[str] = [
    "a nickname for a baby boy", "a name for a baby girl", "a name for a black cat", "a name for a small bakery",
    "a name for a friendly robot", "a name for a golden retriever",
]


def _rate(rows: list[dict]) -> str:
    ok = sum(r["ok"] for r in rows)
    return f"{ok}/{len(rows)} ({100 * ok / len(rows):.0f}%)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="the deployment's name (default: the only one, or the embedded default)")
    parser.add_argument("--sampling", choices=("greedy", "server"), default="greedy")
    parser.add_argument("--json", type=Path, help="also write every answer and verdict here")
    args = parser.parse_args()
    dep = dsagent.up(args.model) if args.model is None else dsagent.attach(args.model)
    llm = dsagent.local_deepseek(dep.name, max_tokens=96, **({"temperature": 0.0} if args.sampling == "greedy" else {}))
    t0 = time.time()
    rows: dict[str, list[dict]] = {"translate": [], "Q&A": [], "naming (form)": []}
    answers = recipes.translate_batch([t for t, _ in TRANSLATIONS], to="French", llm=llm)
    for (text, accepted), answer in zip(TRANSLATIONS, answers):
        v = check_translation(answer, accepted)
        rows["translate"].append({"input": text, "answer": answer, "ok": v.ok, "note": v.note})
    answers = recipes.ask_batch([q for q, _ in FACTS], llm=llm)
    for (question, expected), answer in zip(FACTS, answers):
        v = check_fact(answer, expected)
        rows["Q&A"].append({"input": question, "answer": answer, "ok": v.ok, "note": v.note})
    names = recipes.suggest_names_batch(NAMING, n=3, llm=llm)
    for description, found in zip(NAMING, names):
        v = check_names(found, 3)
        rows["naming (form)"].append({"input": description, "answer": found, "ok": v.ok, "note": v.note})
    took = time.time() - t0

    print(f"deployment {dep.name} ({dep.model}), sampling {args.sampling}, {took:.0f} s\n")
    print("| recipe | right | set |")
    print("|---|---|---|")
    for recipe, got in rows.items():
        what = {"translate": "English -> French, accepted translations", "Q&A": "named the expected words",
                "naming (form)": "3 distinct capitalised names"}[recipe]
        print(f"| {recipe} | {_rate(got)} | {what} |")
    print("\nanswers (first 5 per recipe):")
    for recipe, got in rows.items():
        for r in got[:5]:
            print(f"  [{recipe}] {r['input']!r} -> {r['answer']!r}  {'ok' if r['ok'] else 'wrong'}")
    if args.json:
        args.json.write_text(json.dumps({"deployment": dep.name, "model": dep.model, "sampling": args.sampling,
                                         "rows": rows}, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
