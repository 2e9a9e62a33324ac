-- The subset of Coder's schema that agent resolution reads. Table, column, type,
-- constraint and index names follow Coder's coderd/database/dump.sql so that the
-- resolution statement runs unchanged against a Coder database. Coder columns
-- the resolution never touches (owner_id, template_version_id, ...) are left out.

CREATE TYPE provisioner_job_type AS ENUM (
    'template_version_import',
    'workspace_build',
    'template_version_dry_run'
);

CREATE TYPE workspace_transition AS ENUM ('start', 'stop', 'delete');

CREATE TABLE workspaces (
    id uuid NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    deleted boolean NOT NULL DEFAULT false,
    name character varying(64) NOT NULL,
    CONSTRAINT workspaces_pkey PRIMARY KEY (id)
);

-- Coder's equivalent is unique per (owner_id, lower(name)); idgate has no owners.
CREATE UNIQUE INDEX workspaces_name_idx ON workspaces USING btree (lower((name)::text))
    WHERE (deleted = false);

CREATE TABLE provisioner_jobs (
    id uuid NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    type provisioner_job_type NOT NULL,
    input jsonb NOT NULL,
    CONSTRAINT provisioner_jobs_pkey PRIMARY KEY (id)
);

CREATE TABLE workspace_builds (
    id uuid NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    workspace_id uuid NOT NULL,
    build_number integer NOT NULL,
    transition workspace_transition NOT NULL,
    job_id uuid NOT NULL,
    CONSTRAINT workspace_builds_pkey PRIMARY KEY (id),
    CONSTRAINT workspace_builds_job_id_key UNIQUE (job_id),
    -- Also the index behind "latest build of a workspace" (max(build_number)).
    CONSTRAINT workspace_builds_workspace_id_build_number_key UNIQUE (workspace_id, build_number),
    CONSTRAINT workspace_builds_job_id_fkey FOREIGN KEY (job_id)
        REFERENCES provisioner_jobs (id) ON DELETE CASCADE,
    CONSTRAINT workspace_builds_workspace_id_fkey FOREIGN KEY (workspace_id)
        REFERENCES workspaces (id) ON DELETE CASCADE
);

CREATE TABLE workspace_resources (
    id uuid NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    job_id uuid NOT NULL,
    transition workspace_transition NOT NULL,
    type character varying(192) NOT NULL,
    name character varying(64) NOT NULL,
    CONSTRAINT workspace_resources_pkey PRIMARY KEY (id),
    CONSTRAINT workspace_resources_job_id_fkey FOREIGN KEY (job_id)
        REFERENCES provisioner_jobs (id) ON DELETE CASCADE
);

CREATE INDEX workspace_resources_job_id_idx ON workspace_resources USING btree (job_id);

CREATE TABLE workspace_agents (
    id uuid NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    name character varying(64) NOT NULL,
    resource_id uuid NOT NULL,
    auth_token uuid NOT NULL,
    auth_instance_id character varying,
    parent_id uuid,
    deleted boolean NOT NULL DEFAULT false,
    CONSTRAINT workspace_agents_pkey PRIMARY KEY (id),
    CONSTRAINT workspace_agents_resource_id_fkey FOREIGN KEY (resource_id)
        REFERENCES workspace_resources (id) ON DELETE CASCADE,
    CONSTRAINT workspace_agents_parent_id_fkey FOREIGN KEY (parent_id)
        REFERENCES workspace_agents (id) ON DELETE CASCADE
);

-- The resolution's entry point: instance ID → agent rows.
CREATE INDEX workspace_agents_auth_instance_id_deleted_idx ON workspace_agents
    USING btree (auth_instance_id, deleted);
CREATE INDEX workspace_agents_auth_token_idx ON workspace_agents USING btree (auth_token);
CREATE INDEX workspace_agents_resource_id_idx ON workspace_agents USING btree (resource_id);
CREATE INDEX workspace_agents_parent_id_idx ON workspace_agents USING btree (parent_id);
