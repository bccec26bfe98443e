"""Run inside a dicompyler-core environment (pydicom < 3): the DVH mean dose of every ROI of an
RTSTRUCT over an RTDOSE, as JSON ``{roi name: mean dose in Gy}``. An independent DVH code for
the export tests (it imports nothing of theralake).

    python dvh_dicompyler.py RTSTRUCT.dcm RTDOSE.dcm
"""

import json
import sys

from dicompylercore import dicomparser, dvhcalc

structure_path, dose_path = sys.argv[1], sys.argv[2]
structures = dicomparser.DicomParser(structure_path).GetStructures()
means = {}
for number, structure in structures.items():
    dvh = dvhcalc.get_dvh(structure_path, dose_path, number)
    if dvh.volume > 0:
        means[structure["name"]] = float(dvh.mean)
print(json.dumps(means))
