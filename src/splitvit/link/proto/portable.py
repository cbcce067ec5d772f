"""Make the generated ``splitvit_pb2.py`` load under every protobuf runtime splitvit supports (5.26 on).

protoc writes a check that the runtime is at least the protoc that generated the file (7.x today),
which would shut out Flower, whose own stubs pin protobuf below 7. The file itself, one serialized
descriptor built with ``_builder``, loads under any runtime from 5.26 on, so the check is dropped.
Run by ``make proto`` after protoc.
"""

import re
import sys
from pathlib import Path

path = Path(sys.argv[1])
text = path.read_text()
text, n = re.subn(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n", "", text)
text = text.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
if n != 1:
    sys.exit(f"{path}: expected one runtime version check from protoc, found {n}")
path.write_text(text.replace("# Protobuf Python Version:", "# (runtime version check removed by proto/portable.py)\n# Protobuf Python Version:"))
