"""On call: what happens while nobody watches a run (issue 18): alerts, and the autopilot that applies
the restart playbook under a policy. The layer comes after `report`: it reads a run's incidents through
`report` and acts only through the audited intervention channel (`record.interventions`)."""
