{#- Writes <output dir>/<project>/<deployment>/hello.txt on the minion.
    The output dir is the minion option (or grain/pillar) spirodeploy_demo_dir,
    default /tmp/spirodeploy-demo. #}
{%- set project, deployment = saltenv.rsplit('/', 1) %}
{%- set output_dir = salt['config.get']('spirodeploy_demo_dir', '/tmp/spirodeploy-demo') %}

hello-file:
  file.managed:
    - name: {{ [output_dir, project, deployment, 'hello.txt']|join('/')|tojson }}
    - source: salt://hello/files/hello.txt.j2
    - template: jinja
    - makedirs: True
    - context:
        project: {{ project|tojson }}
        deployment: {{ deployment|tojson }}
