"""SOP playbooks: files → versioned `sop_playbooks` rows; triggers enroll contacts; `sop-tick` turns
due steps into tasks (with a tracked link and a ready message) and optional sends; stop conditions end
enrollments early. See content/playbooks/README.md for the file format.
"""
