"""Suggest names with the local model.

    python recipes/naming.py "a nickname for a baby boy" -n 3
"""

import argparse

import dsagent

parser = argparse.ArgumentParser(description="Suggest names with the running dsagent deployment.")
parser.add_argument("description")
parser.add_argument("-n", type=int, default=3, help="how many names (default 3)")
args = parser.parse_args()
for name in dsagent.suggest_names(args.description, n=args.n):
    print(name)
