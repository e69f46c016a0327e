"""Ask the local model a question.

    python recipes/qa.py "What is the capital of France?"
"""

import argparse

import dsagent

parser = argparse.ArgumentParser(description="Ask the running dsagent deployment a question.")
parser.add_argument("question")
args = parser.parse_args()
print(dsagent.ask(args.question))
