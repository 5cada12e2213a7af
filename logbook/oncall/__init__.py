"""On call: what happens to a run while nobody watches a browser (issue 18).

`alerts` turns what detection already finds (incidents, crashes, restarts, stalls, interventions) into
alerts with a lifecycle, kept in an append-only outbox in the run directory (RUN_DIR/alerts.jsonl);
`channels` delivers them (webhook, Slack, Discord, email, a command hook) at least once; `watch` is the
headless loop that follows the store and does both. `autopilot` applies the restart playbook under a
policy, acting only through the audited intervention channel (`record.interventions`); `cli` holds its
commands. This layer reads through `report` and `store.queries` like the dashboard does, and talks to
the outside with the standard library only (urllib, smtplib, subprocess), so it needs neither Streamlit
nor torch.
"""
