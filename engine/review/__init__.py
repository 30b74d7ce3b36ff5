"""The radiologist review loop: answers from filled report packets back into the store.

fields.py names the form fields, importer.py reads filled PDFs and exported JSON into
the `reviews` table (store.py), agreement.py holds the agreement statistics and
section.py builds the report section that shows them.
"""
