"""Translate text with the local model.

    python recipes/translate.py "I love programming." --to French
"""

import argparse

import dsagent

parser = argparse.ArgumentParser(description="Translate text with the running dsagent deployment.")
parser.add_argument("text")
parser.add_argument("--to", default="French", help="target language (default French)")
args = parser.parse_args()
print(dsagent.translate(args.text, to=args.to))
