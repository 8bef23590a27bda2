"""The package's build backend (PEP 517), in the tree so that `pip install ./python` needs no download: a
wheel of the lasp package with the checkout's build/liblasp.so beside it. Build lasp first (`make`)."""
import base64
import hashlib
import os
import sysconfig
import zipfile

NAME, VERSION = "lasp", "0.1.0"
HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.join(HERE, "..", "build", "liblasp.so")
DIST = "%s-%s.dist-info" % (NAME, VERSION)
METADATA = ("Metadata-Version: 2.1\nName: %s\nVersion: %s\nSummary: LASP linear attention from PyTorch (the lasp "
            "C library through ctypes)\nRequires-Python: >=3.8\n" % (NAME, VERSION))


def _tag():
    return "py3-none-" + sysconfig.get_platform().replace("-", "_").replace(".", "_")


def get_requires_for_build_wheel(config_settings=None):
    return []


def _files():
    """(path in the wheel, bytes) of the package, the library and the metadata (RECORD aside)."""
    if not os.path.exists(LIB):
        raise RuntimeError("%s is missing: build lasp first (`make` in the checkout), then pip install ./python"
                           % os.path.abspath(LIB))
    out = []
    pkg = os.path.join(HERE, "lasp")
    for f in sorted(os.listdir(pkg)):
        if f.endswith(".py"):
            out.append(("lasp/" + f, open(os.path.join(pkg, f), "rb").read()))
    out.append(("lasp/liblasp.so", open(LIB, "rb").read()))
    out.append((DIST + "/METADATA", METADATA.encode()))
    out.append((DIST + "/WHEEL", ("Wheel-Version: 1.0\nGenerator: lasp\nRoot-Is-Purelib: false\nTag: %s\n"
                                  % _tag()).encode()))
    return out


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "%s-%s-%s.whl" % (NAME, VERSION, _tag())
    files = _files()
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files:
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append("%s,sha256=%s,%d" % (path, digest, len(data)))
        record.append(DIST + "/RECORD,,")
        z.writestr(DIST + "/RECORD", "\n".join(record) + "\n")
    return name
