"""Runs in the separate BFCL environment (not the project's): the official AST checker's verdict per item.

Reads JSON lines {id, category, function, ground_truth, model_output} on stdin, writes {id, valid, error_type}
lines on stdout. ``model_output`` is BFCL's decoded form, ``[{function_name: {argument: value}}]``, or null when
the output could not be decoded (BFCL counts that as invalid before its AST checker runs).
"""

import json
import sys

from bfcl_eval.constants.enums import Language
from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING
from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

# An OpenAI function-calling model: BFCL maps its expected "a.b" names to "a_b", as OpenAI tools require.
MODEL = "gpt-4o-2024-11-20-FC"
assert MODEL_CONFIG_MAPPING[MODEL].underscore_to_dot


def main() -> None:
    for line in sys.stdin:
        item = json.loads(line)
        if item["model_output"] is None:
            result = {"valid": False, "error_type": "decode_error"}
        else:
            result = ast_checker(
                item["function"],
                item["model_output"],
                item["ground_truth"],
                Language.PYTHON,
                item["category"],
                MODEL.replace("/", "_"),
            )
        print(
            json.dumps({"id": item["id"], "valid": bool(result["valid"]), "error_type": result.get("error_type", "")})
        )


if __name__ == "__main__":
    main()
