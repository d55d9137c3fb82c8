-- Route ownership (issue 17). A host belongs to at most one workspace: only its APIs
-- route on it, and its requests never fall through to another workspace's any-host
-- routes. Hosts are assigned by an operator (`rateguard hosts assign HOST WORKSPACE`);
-- in an install with a single workspace, that workspace claims a host by routing on it.
-- The host '*' stands for the any-host routes: assigned, only that workspace may create
-- them; unassigned, workspaces share them and no workspace's prefix may overlap
-- (equal, above or below) another workspace's.
CREATE TABLE route_hosts (
    host         text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    assigned_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX route_hosts_workspace ON route_hosts (workspace_id);

-- Existing host routes: each host goes to the workspace whose API used it first (a
-- later workspace on the same host is the likelier taker; its APIs stop routing there
-- until an operator reassigns the host).
INSERT INTO route_hosts (host, workspace_id)
SELECT DISTINCT ON (host) host, workspace_id FROM apis
 WHERE host IS NOT NULL ORDER BY host, created_at, id;
